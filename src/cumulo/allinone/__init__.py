"""`cumulo up` / `cumulo down`: the whole cloud on one machine."""
