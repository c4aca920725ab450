"""cumulo.services"""
