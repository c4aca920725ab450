"""The EC2 Query API: form-encoded requests signed with SigV4, XML answers in EC2's namespace.

A facade: every action maps onto cumulo's services (the rules live there, once). One module
per resource family registers its actions (`registry.action`); `endpoint` authenticates,
dispatches and renders.
"""
