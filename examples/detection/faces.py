"""A real pretrained detector by the user route: MTCNN (facenet-pytorch 2.6.0's weights).

``build`` returns the P-, R- and O-Net cascade as one module that follows torchvision's
detector convention (faces, label 0); ``faces_weights.py`` writes its pretrained weights.
"""

from torch import nn

from prunelab.sources.models.mtcnn import MTCNN


def build() -> nn.Module:
    return MTCNN()
