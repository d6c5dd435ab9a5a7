"""vsrt.export"""
