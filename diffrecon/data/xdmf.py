"""An XDMF descriptor that lets ParaView/VisIt open 3D arrays of ``reconstruction.h5``.

The descriptor is a small XML file beside the HDF5 file (which it references by name); it
declares one uniform grid (``3DCoRectMesh``, origin and spacing in metres, axes slowest first:
z, y, x for the Bragg lab frame) and each float dataset on it as a point-centred scalar.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

NUMBER_TYPES = {"f": ("Float", None), "i": ("Int", None), "u": ("UInt", None)}


def write_xdmf(path: str | os.PathLike[str], h5_name: str, arrays: Mapping[str, np.ndarray],
               spacing_m: Sequence[float], origin_m: Sequence[float]) -> None:
    """Write the descriptor of the (D, H, W) ``arrays`` stored at ``/<name>`` in ``h5_name``.

    Args:
        path: the .xdmf file to write.
        h5_name: the HDF5 file name, relative to the descriptor's folder.
        arrays: name -> array as stored (all the same (D, H, W) shape; non-numeric or
            boolean arrays are left out).
        spacing_m: (3,) voxel size (z, y, x), metres.
        origin_m: (3,) position of voxel [0, 0, 0] (z, y, x), metres.
    """
    items = {k: v for k, v in arrays.items() if v.dtype.kind in NUMBER_TYPES}
    if not items:
        return
    shape = next(iter(items.values())).shape
    dims = " ".join(str(n) for n in shape)
    lines = ['<?xml version="1.0" ?>', '<Xdmf Version="3.0">', " <Domain>",
             '  <Grid Name="reconstruction" GridType="Uniform">',
             f'   <Topology TopologyType="3DCoRectMesh" Dimensions="{dims}"/>',
             '   <Geometry GeometryType="ORIGIN_DXDYDZ">',
             '    <DataItem Dimensions="3" NumberType="Float" Precision="8" Format="XML">'
             + " ".join(repr(float(v)) for v in origin_m) + "</DataItem>",
             '    <DataItem Dimensions="3" NumberType="Float" Precision="8" Format="XML">'
             + " ".join(repr(float(v)) for v in spacing_m) + "</DataItem>",
             "   </Geometry>"]
    for name, array in items.items():
        if array.shape != shape:
            raise ValueError(f"XDMF array '{name}' has shape {array.shape}, expected {shape}")
        kind = NUMBER_TYPES[array.dtype.kind][0]
        lines += [f'   <Attribute Name="{name}" AttributeType="Scalar" Center="Node">',
                  f'    <DataItem Dimensions="{dims}" NumberType="{kind}" '
                  f'Precision="{array.dtype.itemsize}" Format="HDF">{h5_name}:/{name}</DataItem>',
                  "   </Attribute>"]
    lines += ["  </Grid>", " </Domain>", "</Xdmf>", ""]
    Path(path).write_text("\n".join(lines))
