"""cumulo.agent"""
