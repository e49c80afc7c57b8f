"""fdq.device: everything that runs on the board.

Light by design: numpy, OpenCV and one inference runtime. Nothing here imports the host side
(``fdq.host``, paramiko, rich), so the package can be copied to a board on its own.
The host reuses this package's math (anchors, decoding, NMS, evaluation) so that there is
exactly one implementation of each.
"""
