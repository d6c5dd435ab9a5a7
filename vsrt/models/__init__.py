"""vsrt.models"""
