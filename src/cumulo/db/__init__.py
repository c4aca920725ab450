"""cumulo.db"""
