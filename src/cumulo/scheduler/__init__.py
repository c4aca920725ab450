"""cumulo.scheduler"""
