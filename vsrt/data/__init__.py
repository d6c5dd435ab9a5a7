"""vsrt.data"""
