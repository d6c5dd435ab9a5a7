"""vsrt.eval"""
