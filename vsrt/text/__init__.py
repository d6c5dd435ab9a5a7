"""vsrt.text"""
