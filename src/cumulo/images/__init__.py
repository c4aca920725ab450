"""cumulo.images"""
