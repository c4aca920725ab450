"""cumulo.domain"""
