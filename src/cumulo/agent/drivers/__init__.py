"""cumulo.agent.drivers"""
