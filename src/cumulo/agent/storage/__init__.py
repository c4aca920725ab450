"""cumulo.agent.storage"""
