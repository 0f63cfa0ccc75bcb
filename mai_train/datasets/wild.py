"""The "wild" set: AI-generated and real images from pinned public GitHub repositories, format-matched.

Every image, whatever its class, goes through the same steps so that format, size and metadata
cannot give the label away: decode, EXIF orientation, alpha flattened on mid-grey, RGB, a
downscale by a factor drawn from [1, 1.6] (never an upscale), a 320x320 centre crop, and one
baseline JPEG 4:2:0 encode at a quality drawn from 80-95, without metadata. Each file's draws are
seeded by its SHA-256, so a rebuild gives the same bytes.

    python -m mai_train.datasets.wild --mirrors /work/.mirror --out /work/data/wild

Mirrors are bare git directories, `<mirrors>/<owner>+<name>/repo` (or `.../repo/.git`); files are
read at the pinned commit, so a newer clone gives the same set. Torch-free: Pillow, numpy, stdlib.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import io
import json
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SIZE = 320  # output side; an image must have a shorter side >= SIZE, since we never upscale
MIN_SIDE = 256  # below this an image is "too small" outright (reported apart from 256..319)
SCALE = (1.0, 1.6)
QUALITY = (80, 95)
VAL_PERCENT = 15
PER_SOURCE_CAP = 300
GREY = (128, 128, 128)

# Held out entirely (never train/val): pair test_generator fakes with test_real reals (or val reals).
# Kolors: photoreal latent diffusion; Seedream 5.0: a commercial web generator; DeepFloyd IF:
# pixel-space cascaded diffusion; StyleGAN2 (official TF, config-f FFHQ): a GAN, held out while the
# StyleGAN2-ADA (PyTorch) faces train. No autoregressive source of usable size was found (README.md).
TEST_GENERATORS = frozenset({"Kolors", "Seedream 5.0", "DeepFloyd IF", "StyleGAN2 (config-f FFHQ)"})
TEST_REAL_SOURCE = "sunhays80"

MANIFEST_COLUMNS = ("path,label,source,generator,group,split,origin_repo,origin_commit,origin_path,"
                    "origin_sha256,licence,family").split(",")


@dataclass(frozen=True)
class Source:
    """One repository's contribution. `include`/`exclude` are fnmatch patterns on repo paths."""

    name: str
    repo: str
    commit: str
    label: str  # "real" | "fake"
    generator: str
    family: str  # diffusion | autoregressive | gan | camera | web
    licence: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    tile: str = ""  # "" | "strip" (a row of square tiles, side = height) | "RxC" (an even grid)
    group_re: str = ""  # regex on the path; its first group ties near-duplicates (default: the path)
    cap: int = PER_SOURCE_CAP
    notes: str = ""


SOURCES: tuple[Source, ...] = (
    # ---- fake -------------------------------------------------------------------------------
    Source("mj_profiles", "cheekymohnkey/midjourney-profile-tester", "8720bc2b96695e3a67a437f896372a5b3a91420d",
           "fake", "Midjourney", "web", "MIT (repo); Midjourney terms for outputs",
           ("profile_results_backup/*/*.jpg",), group_re=r"profile_results_backup/[^/]+/[^_]+_(.+)\.jpg$",
           notes="34 test prompts x ~10 style profiles; version not stated. Mixed photo/illustration. "
                 "Grouped by prompt so one prompt never straddles train/val."),
    Source("mj_explore", "yukittm/midjourney-explore", "51df5803ecf871000ad3556cdf72a2196cb76e34",
           "fake", "Midjourney", "web", "none stated", ("automation/assets/*/*.jpg",),
           group_re=r"automation/assets/([^/]+)/", notes="One stylised landscape series (--profile), "
           "not photoreal; 1968x2460 JPEGs."),
    Source("sd1_official", "CompVis/stable-diffusion", "21f890f9da3cfbeaba8e2ac3c425ee9e998d5229",
           "fake", "Stable Diffusion 1.x", "diffusion", "CreativeML Open RAIL-M",
           ("assets/stable-samples/txt2img/merged-000[567].png", "assets/stable-samples/txt2img/0000020[23]5.png"),
           tile="strip", notes="Official README samples: rows of 512px squares, split into tiles."),
    Source("sd2_official", "Stability-AI/stablediffusion", "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf",
           "fake", "Stable Diffusion 2.x (768-v)", "diffusion", "MIT (code); CreativeML Open RAIL++-M (model)",
           ("assets/stable-samples/txt2img/768/merged-*.png",), tile="strip",
           notes="Rows of 768px squares; merged-0001/0006 are absent from the snapshot (>4 MiB). The 512px "
                 "rows in txt2img/ are byte copies of the SD 1.x repo's or of unstated model, so not used."),
    Source("kolors", "Kwai-Kolors/Kolors", "0fafa56a76b7acf1e147b153d1e7b8fd65f9055b",
           "fake", "Kolors", "diffusion", "Apache-2.0 (code); Kolors model licence for weights",
           ("imgs/zl8.png", "scripts/outputs/sample_inpainting_[34].jpg", "scripts/outputs/sample_ip_test_ip*.jpg",
            "controlnet/outputs/*.jpg", "dreambooth/ktxl_test_image.png"),
           exclude=("controlnet/outputs/*_condition.jpg", "controlnet/outputs/*_sdxl.jpg"),
           notes="Official README outputs (text-to-image, inpainting, IP-adapter, ControlNet); condition maps "
                 "and SDXL comparison images excluded."),
    Source("hunyuandit", "Tencent/HunyuanDiT", "368280ec35119ed2741a30cc5b40aafde34f8a8a",
           "fake", "HunyuanDiT", "diffusion", "Tencent Hunyuan Community License",
           ("ipadapter/asset/output/*", "controlnet/asset/output/*", "lora/asset/porcelain/inference/*",
            "mllm/images/demo1.png"), group_re=r"ipadapter/asset/output/([a-z]+)_",
           notes="Official README outputs (IP-adapter, ControlNet, LoRA); IP-adapter outputs grouped by reference."),
    Source("kandinsky3", "ai-forever/Kandinsky-3", "a4c9e92e4d9b2a57081b7e33a2e82373c99ddbfc",
           "fake", "Kandinsky 3", "diffusion", "Apache-2.0", ("assets/photo_*.jpg", "assets/butterly_effect.jpg"),
           notes="Official README samples."),
    Source("deepfloyd_if", "deep-floyd/IF", "ffc8163891682beaca0c5eb6b9077860a3bc6509",
           "fake", "DeepFloyd IF", "diffusion", "MIT (code); DeepFloyd IF licence (model)",
           ("pics/dream-III.jpg",), tile="2x2", notes="Official README 2x2 grid of text-to-image samples."),
    Source("seedream5", "Evolink-AI/awesome-seedream-5-pro-guide-and-prompt",
           "7643230be422e9cce67b2603d11806354154cb68", "fake", "Seedream 5.0", "web", "CC BY 4.0 (repo)",
           ("assets/media/00[3-8]-*.png", "assets/media/01[89]-*.png", "assets/media/02[1-4]-*.png"),
           exclude=("assets/media/004-Red-box*", "assets/media/005-doodles*"),
           notes="Prompt-guide outputs (Seedream 5.0 Pro); images with big text or UI excluded by hand."),
    # GAN faces (round 2). stylegan2-ada-pytorch forks that committed `generate.py` outputs.
    Source("stylegan2ada_agegan", "ZhuoxuanZhangHarry/AgeGAN-FaceEvolution", "7f2276f4c9b59acbda4463888e48c36c68c6c1c2",
           "fake", "StyleGAN2-ADA (FFHQ)", "gan", "NVIDIA Source Code License (repo, LICENSE.txt)", ("out/seed*.png",),
           notes="31 generate.py outputs (seeds 0-30), 1024px faces; network not named in the repo (no README); "
                 "FFHQ-like photoreal faces, so FFHQ model assumed."),
    Source("stylegan2ada_kenton", "kenton0607/stylegan2-ada-pytorch", "0fc234fbebc8ac5753613198a968382be2514771",
           "fake", "StyleGAN2-ADA (FFHQ)", "gan", "NVIDIA Source Code License (repo, LICENSE.txt)",
           ("out/ffhq/trunc=0.[37]/*.png", "out/ffhq/trunc=1/*.png", "out/style-mixing/*.png"),
           exclude=("out/style-mixing/grid.png",), group_re=r"(?:seed0*|style-mixing/)(\d+)",
           notes="1024px FFHQ generate.py outputs at truncation 0.3/0.7/1 and style-mixing outputs; trunc=0 (all the "
                 "same mean face) and the mixing grid excluded. Grouped by (row) seed: one seed's truncations and "
                 "mixes share identity."),
    Source("stylegan2_xinyiff", "xinyiff/Project-on-StyleGAN", "bf649bed48ab7a77497ba209439a470171215fd6",
           "fake", "StyleGAN2 (config-f FFHQ)", "gan", "NVIDIA Source Code License (repo, LICENSE.txt)",
           ("results/0000[13]-generate-images/seed*.png",), group_re=r"seed(\d+)\.png$",
           notes="Official StyleGAN2 (TensorFlow) run_generator.py outputs, README seeds 6600-6610, 1024px. Run 00000 "
                 "(truncation 0: one mean face), 00002 (near-mean faces) and 00004 (a re-run of 00003, mean abs. "
                 "difference 2e-5) excluded. Held out as test_generator."),
    Source("stylegan_seeprettyface", "a312863063/seeprettyface-dataset", "07dbe193340bc2341d4c0b3abbb2bce0c42c5e29",
           "fake", "StyleGAN (seeprettyface)", "gan", "none stated (README: free use, no commercial use)",
           ("EP001-01.png", "female_example.png", "male_example.png"),
           notes="Three single 1024px StyleGAN faces; the other files are 8x8 grids of 128px tiles (too small). "
                 "A corner watermark lies outside the 320px centre crop."),
    Source("flux_xlabs", "XLabs-AI/x-flux", "47495425dbed499be1e8e5a6e52628b07349cba2",
           "fake", "FLUX.1-dev (XLabs LoRA/ControlNet)", "diffusion",
           "Apache-2.0 (repo); FLUX.1-dev non-commercial licence (model)",
           ("assets/readme/examples/furry*.png", "assets/readme/examples/result_*.png",
            "assets/readme/examples/picture-[5-7]-rev1.png"),
           notes="README outputs of FLUX.1-dev with XLabs LoRAs; the 3-panel strips with seed captions, ControlNet "
                 "condition/result pairs and example_images/statue.jpg (an input) excluded."),
    # ---- real -------------------------------------------------------------------------------
    Source("camera_corpus", "drewnoakes/metadata-extractor-images", "4beba640487802442bc9931fb01274e908102d3a",
           "real", "real (camera samples)", "camera", "none stated (README: 'free to use these media files')",
           ("jpg/*.jpg", "jpg/*.jpeg", "jpg/*.JPG"),
           exclude=("jpg/Issue*", "jpg/issue*", "jpg/Photoshop*", "jpg/metadata-extractor*", "jpg/FLIR*",
                    "jpg/User*", "jpg/Multiple*", "jpg/Reconyx*",
                    # seen in the built set: a text screenshot, a logo close-up, an all-black frame
                    "jpg/Pentax ist D.jpg", "jpg/Panasonic Lumix DMC-LX7.jpg", "jpg/Sony DSC-P12.jpg"),
           notes="Camera test images from ~40 makes/models; files >= 4 MiB are absent from the snapshot. "
                 "Thermal, trail-camera, edited, bug-report and three non-photo files excluded."),
    Source("urban100", "jbhuang0604/SelfExSR", "8f6dd8c1d20cb7e8792a7177b4f6fd677633f598",
           "real", "real (Urban100)", "web", "none stated (research data set)",
           ("data/Urban100/image_SRF_2/*_HR.png",), notes="Urban100 high-resolution ground truth (Flickr photos "
                                                           "of buildings)."),
    Source("sunhays80", "jbhuang0604/SelfExSR", "8f6dd8c1d20cb7e8792a7177b4f6fd677633f598",
           "real", "real (Sun-Hays80)", "web", "none stated (research data set)",
           ("data/Sun-Hays80/image_SRF_8/*_HR.png",), notes="Sun & Hays scene photos; held out as test_real."),
    Source("exifr_fixtures", "MikeKovarik/exifr", "6cbf6e921688faf7723e1f2e0b9e672d1f0aa21c",
           "real", "real (exifr test photos)", "camera", "MIT (repo)", ("test/fixtures/*.jpg", "test/fixtures/*.jpeg",
                                                                       "test/fixtures/sidecar/*.jpg"),
           exclude=("test/fixtures/iptc-*-photographer-example.jpg", "test/fixtures/*no_exif*",
                    "test/fixtures/*-tiny.jpg", "test/fixtures/xmp depth map*",
                    "test/fixtures/canon-dslr.jpg"),  # an almost black frame,
           notes="Phone/DSLR test photos of a metadata library; watermarked IPTC examples, duplicates and a "
                 "depth map excluded."),
    # Real photos (round 2): faces, low-light/night scenes, Kodak and McMaster.
    Source("deepface_faces", "serengil/deepface", "243209fd7b46ecdecf72665cc25219f6e8181f25",
           "real", "real (deepface test photos)", "web", "MIT (repo); photos of public figures, photographers' "
           "copyright not stated", ("tests/unit/dataset/*.jpg",), exclude=("tests/unit/dataset/*_reflection*",),
           notes="Face-recognition unit-test photos: press/event portraits of ~15 public figures, 400-4600px. "
                 "A mirrored copy excluded. One person can appear in both train and val."),
    Source("lowlight_dicm_lime", "Li-Chongyi/Zero-DCE", "e0f4adc54d0f23348c4a9b84acc08fe8778d5bfd",
           "real", "real (DICM + LIME low-light)", "camera", "none stated (research data sets)",
           ("Zero-DCE_code/data/test_data/DICM/*.jpg", "Zero-DCE_code/data/test_data/LIME/*.bmp"),
           notes="Low-light test sets: DICM (consumer-camera photos: night scenes, buildings, flowers, landscapes) "
                 "and LIME; some DICM files are crops of one scene."),
    Source("kodak_mcmaster", "cszn/FFDNet", "e787f46df2f374ff3591186706229cb9a0591fea",
           "real", "real (Kodak24 + McMaster)", "camera", "none stated (research test sets)",
           ("testsets/Kodak24/*.png", "testsets/McMaster/*.tif"),
           notes="Kodak PhotoCD (scanned film) and McMaster colour-demosaicking photos, 500x500 crops as used in "
                 "denoising papers. CBSD68 (= BSDS500) not used."),
    # ---- round 3: modern, mostly photoreal generators + modern phone/stock photos -------------
    # The detector missed photoreal fakes from generators it never saw, so this round adds 2024-25 open and
    # API generators (Qwen-Image, plain FLUX.1-dev, Z-Image-Turbo, FLUX.2 klein, FIBO, ERNIE-Image, Krea 2,
    # AuraFlow, CogView3-Plus, Playground v2/v2.5, Stable Cascade, SD-Turbo and SDXL few-step distillations) and,
    # on the real side, what it lacked: 2020s phone snapshots of people, indoor rooms, street crowds, food. Prompt-
    # keyed groups keep one prompt's renders (several API providers, several models) in one split.
    Source("qwen_image_yetter", "jyoung105/yetter", "131d503f7b35d76ea6f44d9ebb4983792b3eb207",
           "fake", "Qwen-Image", "diffusion", "none stated",
           ("control_group/*/qwen-image/results/*.png", "model/qwen-image/results/*.png"),
           exclude=("control_group/*/qwen-image/results/prompt_07_*", "model/qwen-image/results/prompt_07_*"),
           group_re=r"prompt_(\d+)_", notes="API benchmark: the same 10 prompts through 4 providers (fal, replicate, "
           "runware, wavespeed) and Yetter, 1024-1328px. Prompt 7 (flat abstract geometric art) excluded."),
    Source("flux1dev_yetter", "jyoung105/yetter", "131d503f7b35d76ea6f44d9ebb4983792b3eb207",
           "fake", "FLUX.1-dev", "diffusion", "none stated; FLUX.1-dev non-commercial licence (model)",
           ("control_group/*/flux-1-dev/results/*.png", "model/flux-1-dev/results/*.png"),
           exclude=("control_group/*/flux-1-dev/results/prompt_07_*", "model/flux-1-dev/results/prompt_07_*"),
           group_re=r"prompt_(\d+)_", notes="Same benchmark and prompts as qwen_image_yetter, plain FLUX.1-dev (28 "
           "steps). Prompt 7 (abstract art) and all Kontext edits (text posters, anime, real input photos) excluded."),
    Source("zimage_mlbench", "Yehia-Fahmy/ML_Benchmarking", "68214350aab61687f6b4effb55cdaafae70b7be4",
           "fake", "Z-Image-Turbo", "diffusion", "none stated; Apache-2.0 (model)",
           ("Z-Image-Turbo-outputs-png/*.png", "comparison results/z-image-turbo/*.png",
            "comparison_results/z-image-turbo/baseline/*.png"),
           notes="512px benchmark outputs of photographic prompts (street, portrait, food, landscapes)."),
    Source("sdturbo_mlbench", "Yehia-Fahmy/ML_Benchmarking", "68214350aab61687f6b4effb55cdaafae70b7be4",
           "fake", "SD-Turbo", "diffusion", "none stated; Stability AI non-commercial (model)",
           ("comparison results/sd-turbo/*.png", "comparison_results/sd-turbo/baseline/*.png"),
           notes="512px outputs of the same benchmark. Its SD 1.5 outputs are not used (SD 1.x is in round 1)."),
    # mflux regression references: one text-to-image render per model, <= 3 a generator, but they are the only
    # labelled outputs found for these 2025 models. Edits of real input photos, depth maps, upscales, the text
    # poster and the README mosaics are not used.
    Source("flux2_klein_mflux", "filipstrand/mflux", "97ac5e6280e8c65e48a609722229eb9d03ef2cbe",
           "fake", "FLUX.2 [klein]", "diffusion", "MIT (repo); FLUX.2 klein licence (model)",
           ("tests/resources/reference_flux2_klein_tiger_swim.png",
            "tests/resources/reference_flux2_klein_9b_tiger_swim.png"),
           group_re=r"(tiger_swim)", notes="4B and 9B renders of one prompt (grouped)."),
    Source("fibo_mflux", "filipstrand/mflux", "97ac5e6280e8c65e48a609722229eb9d03ef2cbe",
           "fake", "FIBO (Bria)", "diffusion", "MIT (repo); Bria FIBO licence (model)",
           ("tests/resources/reference_fibo.png", "tests/resources/reference_fibo_lite.png",
            "tests/resources/reference_fibo_white_owl.png"),
           group_re=r"(reference_fibo)", notes="Three owl renders (FIBO, FIBO lite), grouped."),
    Source("ernie_image_mflux", "filipstrand/mflux", "97ac5e6280e8c65e48a609722229eb9d03ef2cbe",
           "fake", "ERNIE-Image", "diffusion", "MIT (repo)",
           ("tests/resources/reference_ernie_image.png", "tests/resources/reference_ernie_image_turbo.png"),
           group_re=r"(reference_ernie)", notes="Base and turbo render of one prompt (grouped)."),
    Source("krea2_mflux", "filipstrand/mflux", "97ac5e6280e8c65e48a609722229eb9d03ef2cbe",
           "fake", "Krea 2 (turbo)", "diffusion", "MIT (repo)", ("tests/resources/reference_krea2_turbo.png",)),
    Source("zimage_mflux", "filipstrand/mflux", "97ac5e6280e8c65e48a609722229eb9d03ef2cbe",
           "fake", "Z-Image-Turbo", "diffusion", "MIT (repo); Apache-2.0 (model)",
           ("tests/resources/reference_z_image_turbo.png", "tests/resources/reference_z_image_turbo_lora.png"),
           group_re=r"(reference_z_image)"),
    Source("qwen_image_mflux", "filipstrand/mflux", "97ac5e6280e8c65e48a609722229eb9d03ef2cbe",
           "fake", "Qwen-Image", "diffusion", "MIT (repo); Apache-2.0 (model)",
           ("tests/resources/reference_qwen_txt2img.png", "tests/resources/reference_qwen_lora.png"),
           group_re=r"(reference_qwen)"),
    # One Replicate packager's README samples: the same 5 prompts (market, shipwreck, airship, snowy village,
    # desert) rendered by each model at 1024px, so each source groups by prompt (the last digit of the name).
    # Its Kolors images (held-out generator) and LCM images (an SD 1.5 Dreamshaper upscaled to 1024) are not used.
    Source("auraflow_cogd", "jyoung105/cog-diffusers", "3f0960e0885d3cdc096066462b8bcaf210607db6",
           "fake", "AuraFlow (v0.1-v0.3)", "diffusion", "none stated; Apache-2.0 (model)", ("assets/af[123][1-5].png",),
           group_re=r"(\d)\.png$"),
    Source("cogview3_cogd", "jyoung105/cog-diffusers", "3f0960e0885d3cdc096066462b8bcaf210607db6",
           "fake", "CogView3-Plus", "diffusion", "none stated; CogView3 licence (model)", ("assets/cv3p[1-5].png",),
           group_re=r"(\d)\.png$"),
    Source("playground2_cogd", "jyoung105/cog-diffusers", "3f0960e0885d3cdc096066462b8bcaf210607db6",
           "fake", "Playground v2", "diffusion", "none stated; Playground v2 community licence (model)",
           ("assets/pg2[1-5].png",), group_re=r"(\d)\.png$"),
    Source("playground25_cogd", "jyoung105/cog-diffusers", "3f0960e0885d3cdc096066462b8bcaf210607db6",
           "fake", "Playground v2.5", "diffusion", "none stated; Playground v2.5 community licence (model)",
           ("assets/pg25[1-5].png",), group_re=r"(\d)\.png$"),
    Source("stable_cascade_cogd", "jyoung105/cog-diffusers", "3f0960e0885d3cdc096066462b8bcaf210607db6",
           "fake", "Stable Cascade", "diffusion", "none stated; Stability AI non-commercial (model)",
           ("assets/sc[1-5].png",), group_re=r"(\d)\.png$"),
    Source("sdxl_fewstep_cogd", "jyoung105/cog-diffusers", "3f0960e0885d3cdc096066462b8bcaf210607db6",
           "fake", "SDXL few-step (Turbo, Lightning, Hyper, DMD2, TCD, PCM, Flash, PeRFlow)", "diffusion",
           "none stated; SDXL Open RAIL++-M and distillation licences (models)",
           ("assets/add[1-5].png", "assets/dmd2[1-5].png", "assets/lightning[1-5].png", "assets/hyper[1-5].png",
            "assets/tcd[1-5].png", "assets/pcm[1-5].png", "assets/flash[1-5].png", "assets/pf[1-5].png"),
           group_re=r"(\d)\.png$", notes="Each model's predict.py loads an SDXL checkpoint (sdxl-turbo, flash-sdxl, "
           "perflow-sdxl-base or SDXL base + LoRA/UNet)."),
    # Real: a photo-management app's samples and tests: recent phone selfies and street/indoor/food photos and
    # stock-style photos (animals, food, objects), 331-2560px.
    Source("photoprism", "photoprism/photoprism", "382ffa89927f9fa2aca6ab83481177e0d81dd405",
           "real", "real (PhotoPrism sample/test photos)", "camera", "AGPL-3.0 (repo); photographers not stated",
           ("assets/examples/*.jpg", "assets/examples/*.JPG", "internal/ai/face/testdata/*.jpg",
            "internal/meta/testdata/*.jpg", "internal/photoprism/testdata/*.jpg"),
           exclude=("assets/examples/6720px_white.jpg",  # an almost blank white frame
                    "internal/ai/face/testdata/7.jpg",  # a drawing
                    "internal/meta/testdata/iptc-*", "internal/meta/testdata/altitude.jpg",  # logo / "SAMPLE" card
                    "internal/meta/testdata/buggy_panorama.jpg", "internal/meta/testdata/no-exif-data.jpg",  # text
                    "internal/*/testdata/panorama360.jpg", "internal/photoprism/testdata/animated-earth.jpg",
                    # byte copies of internal/meta/testdata/digikam.jpg (would be dropped by dedupe anyway)
                    "internal/photoprism/testdata/digikam.jpg", "internal/photoprism/testdata/orientation.jpg"),
           group_re=r"(4120|dog_toshi)",
           notes="Face-detection test photos (phone selfies and snapshots of people, 2020s), metadata test photos "
                 "(phones, GoPro, street, food) and the app's example photos (stock-style). The NSFW test folder, "
                 "text cards, a drawing, a screenshot and 360 panoramas excluded; four copies of one airport photo "
                 "and a recoloured dog pair are grouped."),
    # Indoor rooms and tourist street scenes, two things the real side lacked (feature-matching sample images).
    Source("scannet_superglue", "magicleap/SuperGluePretrainedNetwork", "ddcf11f42e7e0732a0c4607648f9448ea8d73590",
           "real", "real (ScanNet indoor frames)", "camera",
           "SuperGlue academic non-commercial licence (repo); ScanNet terms of use (images)",
           ("assets/scannet_sample_images/*.jpg",), group_re=r"(scene\d+_\d+)",
           notes="RGB frames of 15 indoor scans (offices, bedrooms, bathrooms), 1296x968, two frames a scene "
                 "(grouped); some motion blur. The Freiburg webcam sequence (17 near-identical frames of one "
                 "desk) not used."),
    Source("phototourism_superglue", "magicleap/SuperGluePretrainedNetwork",
           "ddcf11f42e7e0732a0c4607648f9448ea8d73590", "real", "real (Phototourism Flickr photos)", "web",
           "SuperGlue academic non-commercial licence (repo); Flickr photographers' licences (images)",
           ("assets/phototourism_sample_images/*.jpg",),
           notes="Tourist photos of London Bridge, Piazza San Marco, St Paul's and the US Capitol (street, crowds)."),
    Source("sacre_coeur_hloc", "cvg/Hierarchical-Localization", "c13273bd0ecc2917a35910fd843712a1c6243193",
           "real", "real (Phototourism Flickr photos)", "web",
           "Apache-2.0 (repo); Flickr photographers' licences (images)", ("datasets/sacre_coeur/mapping/*.jpg",),
           notes="Ten tourist photos of the Sacre-Coeur (day, dusk, crowds)."),
    Source("face_recognition_examples", "ageitgey/face_recognition", "2e2dccea9dd0ce730c8d464d0f67c6eebb40c9d1",
           "real", "real (face_recognition example photos)", "web",
           "MIT (repo); photos of public figures, photographers' copyright not stated",
           ("examples/*.jpg", "examples/*.png", "examples/knn_examples/test/*.jpg",
            "examples/knn_examples/train/*/*.jpg", "examples/knn_examples/train/*/*.jpeg", "tests/test_images/*.jpg"),
           exclude=("examples/obama-[247]*", "examples/obama_small.jpg",  # resized copies of obama-1080p / too small
                    "tests/test_images/obama_partial_face*"),  # crops of obama.jpg
           group_re=r"(obama|biden)",
           notes="Portraits and event photos of ~8 public figures; byte copies across folders are dropped by the "
                 "dedupe, and the several Obama/Biden photos are grouped (the others have 1-3 photos a person)."),
    # ---- round 4: photoreal fakes from more modern generators + varied web photos -------------------
    # Round 3 raised the true-positive rate on unseen photoreal generators, so this round adds only images that look
    # like photos (portraits, food, interiors, night sky, pets) from photoreal FLUX/SDXL LoRAs and fine-tunes, FLUX
    # quantisations, SDXL base and an inference engine's 2025-26 reference renders (ERNIE-Image, FLUX.2 klein,
    # Ovis-Image, Wan 2.2 t2i). Each source was looked at as a contact sheet; paths are listed one by one
    # so that the illustrations, text posters, edits of real photos and collages next to them stay out.
    Source("canopus_realism_sdxl", "PRITHIVSAKTHIUR/Canopus-Realism", "36adc87ef83bb94eea2416cc394aa41335cd0052",
           "fake", "RealVisXL V4.0 Lightning + Canopus-Realism LoRA (SDXL)", "diffusion",
           "Apache-2.0 (repo LICENSE); README: CreativeML Open RAIL-M", ("assets/[A-I].png",),
           notes="README gallery of a realism LoRA: 9 studio/street portraits at 1024px. assets/[3-9].png and 10/11 "
                 "are 500px copies of the same 9 images, the rest are UI screenshots and a collage cover; not used."),
    Source("flux_realpix", "PRITHIVSAKTHIUR/FLUX-REALPIX", "2d8b5808b761a46db70a7533425045ab7ea1e32c",
           "fake", "FLUX.1-dev + Canopus-LoRA-Flux-FaceRealism", "diffusion",
           "CreativeML Open RAIL-M (README); FLUX.1-dev non-commercial licence (model)",
           ("assets/[1-9][1-9].png", "assets/55.webp"),
           notes="README gallery (9 portraits, 1024px) at the commit before the assets were deleted."),
    Source("flux_super_portrait", "Stranger-Zone/Portrait-Zero-Shot", "75079279045e9c015d4c4d5e2fbf89ea7a17db0e",
           "fake", "FLUX.1-dev + Flux-Super-Portrait-LoRA", "diffusion",
           "MIT (repo); FLUX.1-dev non-commercial licence (model)", ("images/[1-6].png",),
           notes="Six 1280x832 studio portraits; the header image (a copy with a logo and text) not used."),
    Source("flux_gguf_mixed", "chrisgoringe/mixed-gguf-converter", "df72dc5a8e8ad21701da8260023e44c906562bec",
           "fake", "FLUX.1-dev (bf16 and mixed GGUF quantisations)", "diffusion",
           "Apache-2.0 (repo); FLUX.1-dev non-commercial licence (model)",
           ("comparisons/images/default-[124].png", "comparisons/images/model_5_1-[124].png",
            "comparisons/images/model_7_4-[124].png", "comparisons/images/model_9_2-[124].png"),
           group_re=r"-(\d)\.png$",
           notes="Quantisation comparison: one prompt and seed per file number across model variants. Only the three "
                 "photographic prompts (bacon and sausages in a pan, grainy photo of a forest wizard, woman at a bus "
                 "stop) at 4 of the 10 variants (near-duplicates of each other, grouped by prompt); the cosmic, "
                 "horror, mecha and text-sign prompts not used."),
    Source("sdxl_base_comfy", "hitthecodelabs/CreativeAI-Portraits", "c2ea3f10227247182009029639accb81cc99cedc",
           "fake", "SDXL 1.0 (base / refiner)", "diffusion", "MIT (repo); SDXL Open RAIL++-M (model)",
           tuple(f"text2image/output/ComfyUI_{n}_.png" for n in
                 ("00005", "00006", "00008", "00010", "00104", "00105", "00120", "00125", "00128", "00130", "00131")),
           notes="ComfyUI outputs whose embedded workflow names sd_xl_base_1.0 / sd_xl_refiner_1.0 (512 and 1024px): a "
                 "boy with a cat, an old man, astronauts on the moon, library interiors, a wedding table, rain "
                 "bokeh, a spider web, night skies. Illustrations, galaxy-in-a-bottle scenes, an SD 2.1 image, SD 2 "
                 "inpaints of a real Yosemite photo and the SDXL-Turbo fantasy set (all_images/) not used."),
    Source("juggernaut_xl_vix", "Visionatrix/VixFlowsDocs", "6a9d09d6ba56eed833757a155a4480f60cbe9ca7",
           "fake", "Juggernaut XL (X)", "diffusion", "MIT (repo)",
           ("docs/FlowsResults/Juggernaut_XL_[13].png",),
           notes="Flow documentation renders (knight portrait, tiger); the elf portrait not used."),
    Source("flux1_vix", "Visionatrix/VixFlowsDocs", "6a9d09d6ba56eed833757a155a4480f60cbe9ca7",
           "fake", "FLUX.1 (dev or schnell, not stated)", "diffusion", "MIT (repo)",
           ("docs/FlowsResults/Flux_1_[23].png",),
           notes="Car in a night city, woman on a beach; the neon text-sign kitten not used."),
    Source("mobius_xl_vix", "Visionatrix/VixFlowsDocs", "6a9d09d6ba56eed833757a155a4480f60cbe9ca7",
           "fake", "Mobius XL (SDXL fine-tune)", "diffusion", "MIT (repo)",
           ("docs/FlowsResults/Mobius_XL_[13].png",), notes="Owl and soldier; the pug in a printed hoodie not used."),
    Source("sdxl_lightning_vix", "Visionatrix/VixFlowsDocs", "6a9d09d6ba56eed833757a155a4480f60cbe9ca7",
           "fake", "SDXL-Lightning", "diffusion", "MIT (repo)", ("docs/FlowsResults/SDXL_Lighting_8_1.png",),
           notes="8-step render of a smiling girl; the anime hero and the pop-art bear not used."),
    # stable-diffusion.cpp reference renders (one prompt family: a cat photo, most holding a sign). Only the plain
    # photographic cats: the sign-holding cats (SD 3.5 Large's too: its 320px crop is half sign text), edits, the text
    # poster and the PhotoMaker examples (real photos of public figures, identity-conditioned outputs) are not used.
    Source("ernie_image_sdcpp", "leejet/stable-diffusion.cpp", "97d2990807fe6d558e395f8764198d7c7e7b411c",
           "fake", "ERNIE-Image", "diffusion", "MIT (repo)",
           ("assets/ernie_image/example.png", "assets/ernie_image/turbo_example.png"), group_re=r"(ernie_image)"),
    Source("flux2_klein_sdcpp", "leejet/stable-diffusion.cpp", "97d2990807fe6d558e395f8764198d7c7e7b411c",
           "fake", "FLUX.2 [klein]", "diffusion", "MIT (repo)",
           ("assets/flux2/flux2-klein-4b.png", "assets/flux2/flux2-klein-9b.png",
            "assets/flux2/flux2-klein-base-4b.png", "assets/flux2/flux2-klein-base-9b.png"), group_re=r"(flux2-klein)",
           notes="4B/9B, distilled and base: one prompt (grouped)."),
    Source("ovis_image_sdcpp", "leejet/stable-diffusion.cpp", "97d2990807fe6d558e395f8764198d7c7e7b411c",
           "fake", "Ovis-Image", "diffusion", "MIT (repo)", ("assets/ovis_image/example.png",)),
    Source("wan22_t2i_sdcpp", "leejet/stable-diffusion.cpp", "97d2990807fe6d558e395f8764198d7c7e7b411c",
           "fake", "Wan 2.2 (14B, text-to-image)", "diffusion", "MIT (repo); Apache-2.0 (model)",
           ("assets/wan/Wan2.2_14B_t2i.png",)),
    # Replicate (cog) packagings: one README sample each; only the photographic ones.
    Source("realvisxl2_cog", "lucataco/cog-realvisxl-v2.0", "70ecc64c778872e1db0635177eb29bb00305809b",
           "fake", "RealVisXL V2.0 (SDXL fine-tune)", "diffusion", "none stated", ("output.png",)),
    Source("realvisxl2_lcm_cog", "lucataco/cog-realvisxl2-lcm", "4499f9db954c51255e73bffab2beb6acdd995ba7",
           "fake", "RealVisXL V2.0 + LCM-LoRA", "diffusion", "none stated", ("output.0.png",)),
    Source("sdxl_lightning_cog", "lucataco/cog-sdxl-lightning-4step", "241f6270f7095f2904f77e19b30156f0578257f5",
           "fake", "SDXL-Lightning", "diffusion", "none stated", ("output.0.png",)),
    Source("hyper_flux_cog", "lucataco/cog-hyper-flux-8step", "3499ab1b06cc1e1b2164b5b3b417e820aac593da",
           "fake", "FLUX.1-dev + Hyper-SD 8-step LoRA", "diffusion",
           "none stated; FLUX.1-dev non-commercial licence (model)", ("output.0.png",)),
    # Real (round 4): web photos of people (athletes, portraits, groups), animals, vehicles and objects from two
    # background-removal repos' test inputs (2020), to balance the portrait-heavy fakes above.
    Source("u2net_photos", "xuebinqin/U-2-Net", "ac7e1c817ecab7c7dff5ce6b1abba61cd213ff29",
           "real", "real (U-2-Net test photos)", "web",
           "Apache-2.0 (repo); web photos, photographers' copyright not stated",
           ("test_data/test_human_images/*.jpg", "test_data/test_human_images/*.jpeg", "test_data/test_images/*.jpg",
            "test_data/test_images/*.jpeg", "test_data/test_images/*.png",
            "test_data/test_portrait_images/your_portrait_im/*.jpg",
            "test_data/test_portrait_images/your_portrait_im/*.jpeg"),
           exclude=("test_data/test_images/long.jpg",  # calligraphy scan
                    "test_data/test_images/vangogh.jpeg",  # a painting
                    "test_data/test_images/im_27.png",  # composited-looking insect on a desert
                    "test_data/test_images/lamp2_meitu_1.jpg"),  # retouched (Meitu) product shot
           notes="Salient-object / portrait-matting test inputs: athletes, dancers, groups, stock portraits, "
                 "horses, boats, a bike, animals. About a dozen thumbnails under 320px are skipped by the size rule."),
    Source("rembg_examples", "danielgatis/rembg", "684f8e9f6c9162009b21ab637d8f2b0c05502470",
           "real", "real (rembg example photos)", "web", "MIT (repo); stock photos, photographers not stated",
           ("examples/animal-[123].jpg", "examples/car-[123].jpg", "examples/girl-[123].jpg"),
           notes="Background-removal example inputs (wildlife, cars, women outdoors). The anime drawings and the later "
                 "plants photo (origin unclear) not used."),
)


# ---- reading the mirrors --------------------------------------------------------------------------


def git_dir(mirrors: Path, repo: str) -> Path | None:
    base = mirrors / repo.replace("/", "+") / "repo"
    for cand in (base / ".git", base):
        if (cand / "objects").is_dir():
            return cand
    return None


def git(gd: Path, *args: str) -> bytes | None:
    r = subprocess.run(["git", f"--git-dir={gd}", *args], capture_output=True)
    return r.stdout if r.returncode == 0 else None


def matches(path: str, pattern: str) -> bool:
    """fnmatch where `*` stays within one folder (same depth), so `jpg/*.jpg` skips `jpg/sub/x.jpg`."""
    return path.count("/") == pattern.count("/") and fnmatch.fnmatchcase(path, pattern)


def select(src: Source, paths: list[str]) -> list[str]:
    keep = [p for p in paths if any(matches(p, g) for g in src.include)
            and not any(matches(p, g) for g in src.exclude)]
    # Stable order independent of listing order, so the cap takes a fixed pseudo-random subset.
    return sorted(keep, key=lambda p: hashlib.sha256(f"{src.name}:{p}".encode()).hexdigest())


# ---- the identical processing -------------------------------------------------------------------


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        flat = Image.new("RGB", im.size, GREY)
        flat.paste(im, mask=im.getchannel("A"))
        return flat
    return im.convert("RGB")


def tiles(im: Image.Image, spec: str) -> list[Image.Image]:
    w, h = im.size
    if not spec:
        return [im]
    if spec == "strip":
        n = max(1, round(w / h))
        step = w / n
        return [im.crop((round(i * step), 0, round((i + 1) * step), h)) for i in range(n)]
    rows, cols = (int(v) for v in spec.split("x"))
    return [im.crop((round(c * w / cols), round(r * h / rows), round((c + 1) * w / cols), round((r + 1) * h / rows)))
            for r in range(rows) for c in range(cols)]


def process(im: Image.Image, rng: random.Random) -> tuple[bytes, bytes]:
    """Downscale (never up), centre-crop SIZE, one JPEG encode. Returns (jpeg, crop pixels)."""
    w, h = im.size
    f = min(rng.uniform(*SCALE), min(w, h) / SIZE)  # a factor that would leave < SIZE is capped
    f = max(f, 1.0)
    if f > 1.0:
        im = im.resize((max(SIZE, round(w / f)), max(SIZE, round(h / f))), Image.Resampling.LANCZOS)
    w, h = im.size
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    crop = im.crop((left, top, left + SIZE, top + SIZE))
    buf = io.BytesIO()
    crop.save(buf, "JPEG", quality=rng.randint(*QUALITY), subsampling=2, optimize=False, progressive=False)
    return buf.getvalue(), crop.tobytes()


def split_of(src: Source, group: str) -> str:
    if src.label == "fake" and src.generator in TEST_GENERATORS:
        return "test_generator"
    if src.label == "real" and src.name == TEST_REAL_SOURCE:
        return "test_real"
    return "val" if int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) % 100 < VAL_PERCENT else "train"


# ---- the build ------------------------------------------------------------------------------------


@dataclass
class Item:
    src: Source
    path: str
    sha: str
    tile: int
    ntiles: int
    group: str
    split: str
    jpeg: bytes
    pix_sha: str

    @property
    def name(self) -> str:
        stem = Path(self.path).stem.replace(" ", "_")
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)
        t = f"_t{self.tile}" if self.ntiles > 1 else ""
        return f"{stem}{t}__{self.sha[:8]}.jpg"

    @property
    def rel(self) -> str:
        return f"{self.src.name}/{'0_real' if self.src.label == 'real' else '1_fake'}/{self.name}"


@dataclass
class Report:
    missing_mirrors: list[str] = field(default_factory=list)
    missing_objects: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    too_small: list[str] = field(default_factory=list)
    over_cap: dict[str, int] = field(default_factory=dict)
    duplicates: list[dict] = field(default_factory=list)
    cross_class: list[dict] = field(default_factory=list)


def collect(mirrors: Path, report: Report) -> list[Item]:
    items: list[Item] = []
    for src in SOURCES:
        gd = git_dir(mirrors, src.repo)
        if gd is None or git(gd, "cat-file", "-e", f"{src.commit}^{{commit}}") is None:
            report.missing_mirrors.append(src.repo)
            print(f"[{src.name}] mirror missing: git clone --bare https://github.com/{src.repo} "
                  f"{mirrors}/{src.repo.replace('/', '+')}/repo  (needs commit {src.commit})", file=sys.stderr)
            continue
        listing = (git(gd, "ls-tree", "-r", "--name-only", "-z", src.commit) or b"").decode().split("\0")
        kept_files = 0
        for path in select(src, [p for p in listing if p]):
            if kept_files >= src.cap:
                report.over_cap[src.name] = report.over_cap.get(src.name, 0) + 1
                continue
            data = git(gd, "show", f"{src.commit}:{path}")
            where = f"{src.repo}:{path}"
            if not data:
                report.missing_objects.append(where)  # >= 4 MiB or LFS content, absent from the snapshot
                continue
            sha = hashlib.sha256(data).hexdigest()
            try:
                im = decode(data)
            except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip and list it"
                report.undecodable.append(f"{where} ({type(exc).__name__})")
                continue
            parts = tiles(im, src.tile)
            m = re.search(src.group_re, path) if src.group_re else None
            group = f"{src.name}:{m.group(1) if m else path}"
            made = 0
            for i, part in enumerate(parts):
                if min(part.size) < SIZE:
                    report.too_small.append(f"{where}#{i} {part.size[0]}x{part.size[1]}"
                                            + (" (< 256)" if min(part.size) < MIN_SIDE else " (< 320, no upscale)"))
                    continue
                rng = random.Random(int(sha[:16], 16) + i)
                jpeg, pix = process(part, rng)
                items.append(Item(src, path, sha, i, len(parts), group, split_of(src, group), jpeg,
                                  hashlib.sha256(pix).hexdigest()))
                made += 1
            kept_files += made > 0
        print(f"[{src.name}] {sum(1 for it in items if it.src is src)} images", file=sys.stderr)
    return items


def dedupe(items: list[Item], report: Report) -> list[Item]:
    """Keep the first of exact duplicates (original bytes+tile, or decoded crop); drop cross-class pairs."""
    drop: set[int] = set()
    for key in ("orig", "pix"):
        seen: dict[str, list[int]] = defaultdict(list)
        for k, it in enumerate(items):
            seen[f"{it.sha}#{it.tile}" if key == "orig" else it.pix_sha].append(k)
        for ks in seen.values():
            if len(ks) < 2:
                continue
            labels = {items[k].src.label for k in ks}
            rec = {"by": key, "files": [f"{items[k].src.repo}:{items[k].path}#{items[k].tile}" for k in ks],
                   "splits": sorted({items[k].split for k in ks}), "labels": sorted(labels)}
            if len(labels) > 1:
                report.cross_class.append(rec)
                drop.update(ks)
            else:
                rec["scope"] = "within split" if len(rec["splits"]) == 1 else "across splits"
                report.duplicates.append(rec)
                drop.update(ks[1:])
    return [it for k, it in enumerate(items) if k not in drop]


# ---- format-bias check ----------------------------------------------------------------------------

FEATURES = ("file_size", "quant_mean", "laplacian_var")


def features(jpeg: bytes) -> list[float]:
    im = Image.open(io.BytesIO(jpeg))
    q = np.concatenate([np.asarray(t, dtype=float) for t in im.quantization.values()])
    g = np.asarray(im.convert("L"), dtype=float)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return [float(len(jpeg)), float(q.mean()), float(lap.var())]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 25) -> np.ndarray:
    """Newton's method on standardised features with a bias column; small L2 for stability."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) + l2 * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def grouped_cv_accuracy(x: np.ndarray, y: np.ndarray, groups: list[str], folds: int = 10) -> float:
    fold = np.array([int(hashlib.sha256(g.encode()).hexdigest()[:8], 16) % folds for g in groups])
    correct = 0
    for f in range(folds):
        tr, te = fold != f, fold == f
        if not te.any() or len(set(y[tr])) < 2:
            continue
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-9
        w = fit_logistic((x[tr] - mu) / sd, y[tr])
        xt = np.hstack([(x[te] - mu) / sd, np.ones((te.sum(), 1))])
        correct += int((((xt @ w) > 0).astype(float) == y[te]).sum())
    return correct / len(y)


def bias_check(items: list[Item]) -> dict:
    """Can file size, JPEG tables and sharpness alone predict the label? Near 50% is the goal.

    Balanced by subsampling the larger class (deterministically), so chance is 50%."""
    by_label = {lab: sorted((it for it in items if it.src.label == lab), key=lambda it: it.pix_sha)
                for lab in ("real", "fake")}
    n = min(len(v) for v in by_label.values())
    sample = by_label["real"][:n] + by_label["fake"][:n]
    x = np.array([features(it.jpeg) for it in sample])
    y = np.array([1.0 if it.src.label == "fake" else 0.0 for it in sample])
    groups = [it.group for it in sample]
    out = {"n_per_class": n, "features": list(FEATURES), "accuracy": grouped_cv_accuracy(x, y, groups),
           "single_feature_accuracy": {f: grouped_cv_accuracy(x[:, [k]], y, groups) for k, f in enumerate(FEATURES)},
           "class_means": {lab: dict(zip(FEATURES, x[y == v].mean(0).round(3).tolist(), strict=True))
                           for lab, v in (("real", 0.0), ("fake", 1.0))}}
    if out["accuracy"] > 0.65:
        out["carried_by"] = max(out["single_feature_accuracy"], key=out["single_feature_accuracy"].get)
    return out


# ---- output ---------------------------------------------------------------------------------------


def write(items: list[Item], out: Path, report: Report) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for it in sorted(items, key=lambda it: it.rel):
        dest = out / it.rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(it.jpeg)
        s = it.src
        rows.append({"path": it.rel, "label": s.label, "source": s.name, "generator": s.generator,
                     "group": it.group, "split": it.split, "origin_repo": s.repo, "origin_commit": s.commit,
                     "origin_path": it.path + (f"#tile{it.tile}" if it.ntiles > 1 else ""),
                     "origin_sha256": it.sha, "licence": s.licence, "family": s.family})
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    counts = Counter((r["source"], r["generator"], r["family"], r["label"], r["split"]) for r in rows)
    summary = {
        "images": len(rows),
        "by_label_split": {f"{lab}/{sp}": n for (lab, sp), n in
                           sorted(Counter((r["label"], r["split"]) for r in rows).items())},
        "by_generator": dict(sorted(Counter(r["generator"] for r in rows).items())),
        "counts": [{"source": k[0], "generator": k[1], "family": k[2], "label": k[3], "split": k[4], "n": n}
                   for k, n in sorted(counts.items())],
        "held_out": {"test_generator": sorted(TEST_GENERATORS), "test_real": TEST_REAL_SOURCE},
        "sources": [{k: getattr(s, k) for k in ("name", "repo", "commit", "label", "generator", "family",
                                                 "licence", "include", "exclude", "tile", "notes")} for s in SOURCES],
        "quality": {k: getattr(report, k) for k in ("missing_mirrors", "missing_objects", "undecodable", "too_small",
                                                     "over_cap", "duplicates", "cross_class")},
        "bias_check": bias_check(items),
    }
    (out / "build_report.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    report = Report()
    items = dedupe(collect(args.mirrors, report), report)
    s = write(items, args.out, report)
    q = s["quality"]
    print(f"\n{s['images']} images -> {args.out}")
    print(f"{'source':16} {'generator':30} {'family':10} {'label':5} {'split':15} n")
    for c in s["counts"]:
        print(f"{c['source']:16} {c['generator']:30} {c['family']:10} {c['label']:5} {c['split']:15} {c['n']}")
    print("by label/split:", s["by_label_split"])
    print(f"missing objects {len(q['missing_objects'])}, undecodable {len(q['undecodable'])}, too small "
          f"{len(q['too_small'])}, over cap {q['over_cap']}, duplicate sets {len(q['duplicates'])} "
          f"({sum(d['scope'] == 'across splits' for d in q['duplicates'])} across splits), "
          f"cross-class dropped {len(q['cross_class'])}")
    for u in q["undecodable"][:20]:
        print("  undecodable:", u)
    b = s["bias_check"]
    print(f"format-bias check (size, JPEG tables, sharpness; grouped 10-fold CV, {b['n_per_class']}/class): "
          f"{b['accuracy']:.1%}; single features {({k: round(v, 3) for k, v in b['single_feature_accuracy'].items()})}"
          + (f"; carried by {b['carried_by']}" if "carried_by" in b else ""))


if __name__ == "__main__":
    main()
