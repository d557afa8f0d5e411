"""StyleDeck's engine: networks, latents, images and jobs, with no Qt.

The app and scripts use the names in `__all__`; they get numpy arrays, frozen dataclasses and
the typed errors of `engine.errors` back.
"""
from engine.bundled import bundled_networks, default_network, models_dir
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.devices import resolve_device
from engine.edit_state import (EditState, from_json, group_amount, initial_state, load_session, save_session,
                               set_group_amount, to_json, with_base, with_source, without_source)
from engine.downloads import (KNOWN_NETWORKS, DownloadError, KnownNetwork, cache_dir, cached_path,
                              download_network, find_known_network)
from engine.errors import (Cancelled, CorruptFileError, DeviceOutOfMemoryError, NetworkFileNotFoundError,
                           StyleDeckError, UnsafePickleError, UnsupportedNetworkError)
from engine.images import image_grid, save_png, to_images, to_rgb, to_uint8
from engine.jobs import CancelToken, Progress, ProgressCallback, atomic_write
from engine.latents import (GROUP_NAMES, NOISE_MODES, LatentCache, LayerGroup, NoiseMode, Source, base_mix,
                            check_noise_mode, class_to_c, compose_ws, layer_groups, mix_ws, network_family,
                            parse_range_list, parse_styles, seed_to_z, set_mix_weight, truncate, ws_resolutions)
from engine.loader import convert_network, load_network, network_info, provenance, provenance_lines
from engine.networks.stylegan3 import input_transform
from engine.photo import PHOTO_SUFFIXES, PreparedPhoto, load_photo, prepare_photo
from engine.projector import ProjectionOptions, ProjectionResult, lpips_loss, project, save_projection
from engine.pti import (PTIOptions, PTIResult, TunedPhoto, apply_delta, load_delta, pivotal_tune, save_delta,
                        tune_projection)
from engine.recipe import read_image_recipe, recipe_sidecar, save_image
from engine.renderer import RenderOptions, RenderResult, Renderer
from engine.video import (AnimationSpec, ExportResult, Motion, current_keyframe, export_animation, keyframe_spec,
                          preview_animation, render_frames)
from engine.video_encode import EncodeOptions
# fine-tuning
from engine.blending import BlendPreview, BlendResult, blend_block_names, blend_files, blend_networks, blend_schedule
from engine.training import (DATASET_MESSAGE, DatasetReport, Failed, FinetuneProcess, Finished, Progressed,
                             SnapshotWritten, Started, Stopped, TrainOptions, TrainResult, latest_snapshot,
                             start_finetune)

__all__ = [
    # errors
    "Cancelled", "CorruptFileError", "DeviceOutOfMemoryError", "NetworkFileNotFoundError", "StyleDeckError",
    "UnsafePickleError", "UnsupportedNetworkError",
    # networks on disk, devices
    "bundled_networks", "default_network", "models_dir", "resolve_device", "convert_network", "input_transform", "load_checkpoint", "load_network", "network_info", "provenance", "provenance_lines", "save_checkpoint",
    # latents
    "GROUP_NAMES", "NOISE_MODES", "LatentCache", "LayerGroup", "NoiseMode", "Source", "base_mix",
    "check_noise_mode", "class_to_c", "compose_ws", "layer_groups", "mix_ws", "network_family",
    "parse_range_list", "parse_styles", "seed_to_z", "set_mix_weight", "truncate", "ws_resolutions",
    # images
    "image_grid", "save_png", "to_images", "to_rgb", "to_uint8",
    # jobs
    "CancelToken", "Progress", "ProgressCallback", "atomic_write",
    # editing state and sessions
    "EditState", "from_json", "group_amount", "initial_state", "load_session", "save_session", "set_group_amount",
    "to_json", "with_base", "with_source", "without_source",
    # projection
    "PHOTO_SUFFIXES", "PTIOptions", "PTIResult", "PreparedPhoto", "ProjectionOptions", "ProjectionResult",
    "TunedPhoto", "apply_delta", "load_delta", "load_photo", "lpips_loss", "pivotal_tune", "prepare_photo", "project",
    "save_delta", "save_projection", "tune_projection",
    # rendering and saved images
    "RenderOptions", "RenderResult", "Renderer", "read_image_recipe", "recipe_sidecar", "save_image",
    # animations
    "AnimationSpec", "EncodeOptions", "ExportResult", "Motion", "current_keyframe", "export_animation", "keyframe_spec",
    "preview_animation", "render_frames",
    # published networks
    "KNOWN_NETWORKS", "DownloadError", "KnownNetwork", "cache_dir", "cached_path", "download_network",
    "find_known_network",
    # fine-tuning
    "BlendPreview", "BlendResult", "DatasetReport", "Failed", "FinetuneProcess", "Finished", "Progressed",
    "DATASET_MESSAGE", "SnapshotWritten", "Started", "Stopped", "TrainOptions", "TrainResult", "blend_block_names", "blend_files",
    "blend_networks", "blend_schedule", "latest_snapshot", "start_finetune",
]
