"""vsrt.runtime"""
