"""vsrt.calibration"""
