"""cumulo.api"""
