"""cumulo.cli"""
