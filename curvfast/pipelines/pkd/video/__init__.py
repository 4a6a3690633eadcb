"""Compressed-domain video (CoViAR-style) on the real MPEG-4 Part 2 codec, through PyAV.

encode / decode with exported motion vectors (``codec``), motion compensation, residuals and their
accumulation back to the I-frame (``motion``), TSN segment sampling (``sampling``), clip sets and
video folders (UCF-101, HMDB-51, any ``<class>/<clip>`` layout) cached on disk
and read lazily (``datasets``), and a bundled synthetic action dataset
(``synthetic``). PyAV is imported only when a video is encoded or decoded.
"""
from curvfast.pipelines.pkd.video.codec import GOP_SIZE, DecodedVideo, decode_compressed, encode_clip, require_av
from curvfast.pipelines.pkd.video.datasets import (prepare_clip, NORMALIZATION, VIDEO_EXTENSIONS, ClipFiles, ClipSet,
                                                   CompressedVideoDataset,
                                                   cache_clips, folder_clipset, hmdb51_clips, read_frames,
                                                       read_representation,
                                                   reencode, stratified_split, ucf101_clips, videofolder_clips,
                                                   write_representation)
from curvfast.pipelines.pkd.video.motion import (CompressedRepresentation, accumulate, compressed_representation,
                                                 displacement_field,
                     frame_residuals, motion_compensate)
from curvfast.pipelines.pkd.video.sampling import sample_frames, segment_positions
from curvfast.pipelines.pkd.video.synthetic import SyntheticConfig, class_names, render_clip, synthetic_actions

__all__ = [
    "prepare_clip",
    "GOP_SIZE", "DecodedVideo", "decode_compressed", "encode_clip", "require_av", "NORMALIZATION", "VIDEO_EXTENSIONS",
    "ClipFiles", "ClipSet", "CompressedVideoDataset", "cache_clips", "folder_clipset", "hmdb51_clips", "read_frames",
    "read_representation", "reencode", "stratified_split", "ucf101_clips", "videofolder_clips", "write_representation",
    "CompressedRepresentation", "accumulate", "compressed_representation", "displacement_field", "frame_residuals",
    "motion_compensate", "sample_frames", "segment_positions", "SyntheticConfig", "class_names", "render_clip",
    "synthetic_actions",
]
