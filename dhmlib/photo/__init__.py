"""Your own hand: photos → 2D landmarks (MediaPipe Hands, the ``photo`` extra) → a fitted DeepHandMesh.

::

    photo(s) ─► image.load_photo (EXIF orientation, downscale of huge images, EXIF focal length)
             ─► detect.HandDetector (MediaPipe Hands: 21 landmarks, relative depth, handedness, score)
             ─► detect.landmarks_to_joints (MediaPipe's order → our skeleton's joints by name)
             ─► camera (EXIF focal length / a stated field-of-view guess / the capture's KRT_512 cameras)
             ─► fit2d.fit_pose_2d (Euler angles, root and one scale by perspective reprojection, joint-limit
                prior, MediaPipe's relative depth as a weak term; several views of one pose jointly)
             ─► outputs (OBJ/PLY in world and camera frame, pose file, overlay figure, residuals JSON)

``pipeline`` (``detect_photos``, ``fit_detections``) is the chain behind ``dhm fit --image`` and notebook 05; ``evaluate`` measures it on
the virtual capture's held-out images, where the truth is known; ``limits`` asks what landmark error each
accuracy goal needs (the fit on true keypoints with noise); ``calibrate`` fits where the detector puts each
joint (landmark offsets in the joints' frames, opt-in for the fit). Only :mod:`dhmlib.photo.detect` needs
MediaPipe, imported where it is used (``pip install -e '.[photo]'``).
"""
