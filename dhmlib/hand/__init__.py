"""The hand: skeleton, anatomy, the hand-model files, kinematics and the FK + LBS layer."""
