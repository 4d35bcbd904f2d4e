"""Miniature data sets in the official layouts (WIDER FACE, CelebA, CelebA-HQ, FFHQ), for ingest tests.

Images are small, deterministic and drawn with numpy/OpenCV; annotation files use the real syntax
with its edge cases. Each builder writes a local tree and returns what the tests need to know
about it; :func:`upload_tree` copies a tree to an ``s3://`` prefix file by file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import cv2
import numpy as np

from fsr_core import storage


def picture(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth, textured RGB uint8 image (JPEG-friendly, different for every seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3))
    for c in range(3):
        fx, fy, phase = rng.uniform(0.02, 0.15, 2).tolist() + [rng.uniform(0, 6.28)]
        image[..., c] = 128 + 90 * np.sin(fx * xx + phase) * np.cos(fy * yy)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_jpeg(path: str, rgb: np.ndarray, quality: int = 92) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, quality])


def write_png(path: str, image: np.ndarray) -> None:
    """``image`` in OpenCV channel order (BGR / BGRA / grey), uint8 or uint16."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, image)


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def upload_tree(local_root: str, uri: str) -> str:
    """Copy every file below ``local_root`` to ``uri`` (an ``s3://`` prefix); returns ``uri``."""
    for folder, _, files in os.walk(local_root):
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, local_root).replace(os.sep, "/")
            storage.upload_file(path, storage.join(uri, relative))
    return uri


# ---------------------------------------------------------------------------- WIDER FACE
WIDER_TRAIN_GT = """\
0--Parade/0_Parade_a.jpg
3
10 12 30 36 0 0 0 0 0 0 
60 20 24 24 2 1 1 0 1 1 
80 50 20 20 0 0 0 1 0 0 
0--Parade/0_Parade_b.jpg
0
0 0 0 0 0 0 0 0 0 0 
1--Handshaking/1_c.jpg
4
100 30 32 32 0 0 0 0 0 0 
40 40 0 20 0 0 0 0 0 0 
200 10 20 20 0 0 0 0 0 0 
5 5 8 8 0 0 0 0 0 0 
1--Handshaking/1_d.jpg
2
10 10 20 20 0 0 0 0 0 0 
30 30 20 20 0 0 0 0 0
1--Handshaking/1_e.jpg
3
10 10 20 20 0 0 0 0 0 0 
30 30 20 20 0 0 0 0 0 0 
1--Handshaking/1_f.jpg
1
10 x 20 20 0 0 0 0 0 0 
2--Demo/2_truncated.jpg
1
10 10 20 20 0 0 0 0 0 0 
2--Demo/2_empty.jpg
1
10 10 20 20 0 0 0 0 0 0 
2--Demo/2_text.jpg
1
10 10 20 20 0 0 0 0 0 0 
2--Demo/2_missing.jpg
1
10 10 20 20 0 0 0 0 0 0 
2--Demo/2_grey.jpg
1
20 16 40 40 0 0 0 0 2 0 
"""

WIDER_VAL_GT = """\
3--Riot/3_Riot_v.jpg
1
8 8 48 48 1 0 0 0 0 0
"""


def build_wider(root: str, *, duplicate: bool = False) -> str:
    """A WIDER FACE tree; with ``duplicate`` a copy of ``0_Parade_a.jpg`` is annotated as ``2--Demo/2_copy.jpg``."""
    train = os.path.join(root, "WIDER_train", "images")
    write_jpeg(os.path.join(train, "0--Parade", "0_Parade_a.jpg"), picture(96, 120, 1))
    write_jpeg(os.path.join(train, "0--Parade", "0_Parade_b.jpg"), picture(60, 80, 2))
    write_jpeg(os.path.join(train, "1--Handshaking", "1_c.jpg"), picture(90, 120, 3))
    for name in ("1_d.jpg", "1_e.jpg", "1_f.jpg"):
        write_jpeg(os.path.join(train, "1--Handshaking", name), picture(64, 64, 4))
    full = cv2.imencode(".jpg", picture(64, 64, 5))[1].tobytes()
    demo = os.path.join(train, "2--Demo")
    os.makedirs(demo, exist_ok=True)
    with open(os.path.join(demo, "2_truncated.jpg"), "wb") as fh:
        fh.write(full[: len(full) // 2])
    open(os.path.join(demo, "2_empty.jpg"), "wb").close()
    write_text(os.path.join(demo, "2_text.jpg"), "this is not an image\n")
    write_jpeg(os.path.join(demo, "2_grey.jpg"), cv2.cvtColor(picture(80, 90, 6), cv2.COLOR_RGB2GRAY))
    gt = WIDER_TRAIN_GT
    if duplicate:
        shutil.copy(os.path.join(train, "0--Parade", "0_Parade_a.jpg"), os.path.join(demo, "2_copy.jpg"))
        gt += "2--Demo/2_copy.jpg\n1\n10 12 30 36 0 0 0 0 0 0 \n"
    write_jpeg(os.path.join(root, "WIDER_val", "images", "3--Riot", "3_Riot_v.jpg"), picture(64, 64, 7))
    write_text(os.path.join(root, "wider_face_split", "wider_face_train_bbx_gt.txt"), gt)
    write_text(os.path.join(root, "wider_face_split", "wider_face_val_bbx_gt.txt"), WIDER_VAL_GT)
    return root


# ---------------------------------------------------------------------------- CelebA
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def celeba_attribute_values(index: int) -> list[int]:
    return [1 if (index * 7 + k) % 3 == 0 else -1 for k in range(len(CELEBA_ATTRIBUTES))]


def _attr_line(name: str, values: list[int]) -> str:
    # the real file pads positive values with an extra space: "000001.jpg -1  1  1 -1 ..."
    return name + "".join(f" {v:2d}" for v in values) + "\n"


def build_celeba(root: str) -> dict:
    """A CelebA tree: 000001-000004 good (splits 0,0,1,2), 000005 listed but absent, 000006 not in
    the partition, 000007 truncated, 000008 with a malformed landmark line."""
    folder = os.path.join(root, "img_align_celeba")
    landmarks = {}
    for index in (1, 2, 3, 4, 6, 8):
        write_jpeg(os.path.join(folder, f"{index:06d}.jpg"), picture(218, 178, 100 + index))
    full = cv2.imencode(".jpg", picture(218, 178, 107))[1].tobytes()
    with open(os.path.join(folder, "000007.jpg"), "wb") as fh:
        fh.write(full[:-300])
    partitions = {1: 0, 2: 0, 3: 1, 4: 2, 5: 0, 7: 0, 8: 1}
    write_text(os.path.join(root, "list_eval_partition.txt"),
               "".join(f"{i:06d}.jpg {p}\n" for i, p in partitions.items()))
    lines = ["8\n", "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
             "rightmouth_x rightmouth_y\n"]
    for index in (1, 2, 3, 4, 5, 6, 7, 8):
        points = [69 + index, 109, 106, 113 + index, 77, 142, 73, 152, 108, 154]
        landmarks[index] = points
        values = points if index != 8 else points[:9]
        lines.append(f"{index:06d}.jpg" + "".join(f" {v:4d}" for v in values) + "\n")
    write_text(os.path.join(root, "list_landmarks_align_celeba.txt"), "".join(lines))
    write_text(os.path.join(root, "identity_CelebA.txt"),
               "".join(f"{i:06d}.jpg {1000 + i % 3}\n" for i in range(1, 9)))
    attr = ["8\n", " ".join(CELEBA_ATTRIBUTES) + " \n"]
    attr += [_attr_line(f"{i:06d}.jpg", celeba_attribute_values(i)) for i in range(1, 9)]
    write_text(os.path.join(root, "list_attr_celeba.txt"), "".join(attr))
    return {"root": root, "landmarks": landmarks, "partitions": partitions}


# ---------------------------------------------------------------------------- CelebA-HQ / FFHQ
def build_celeba_hq(root: str, *, side: int = 64, duplicate: bool = False) -> str:
    """Square faces in nested folders, plus the odd files of real archives:
    grey, RGBA and 16-bit PNGs (accepted), a non-square PNG, a too-small one, a 0-byte one."""
    write_jpeg(os.path.join(root, "0.jpg"), picture(side, side, 10))
    write_png(os.path.join(root, "1.png"), cv2.cvtColor(picture(side, side, 11), cv2.COLOR_RGB2BGR))
    write_png(os.path.join(root, "more", "2.PNG"), cv2.cvtColor(picture(side, side, 12), cv2.COLOR_RGB2BGR))
    write_png(os.path.join(root, "more", "grey.png"), cv2.cvtColor(picture(side, side, 13), cv2.COLOR_RGB2GRAY))
    rgba = cv2.cvtColor(cv2.cvtColor(picture(side, side, 14), cv2.COLOR_RGB2BGR), cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 200
    write_png(os.path.join(root, "more", "rgba.png"), rgba)
    deep = cv2.cvtColor(picture(side, side, 15), cv2.COLOR_RGB2BGR).astype(np.uint16) * 257 + 3
    write_png(os.path.join(root, "more", "deep16.png"), deep)
    write_png(os.path.join(root, "odd", "wide.png"), cv2.cvtColor(picture(side, side + 8, 16), cv2.COLOR_RGB2BGR))
    write_png(os.path.join(root, "odd", "tiny.png"), cv2.cvtColor(picture(8, 8, 17), cv2.COLOR_RGB2BGR))
    open(os.path.join(root, "odd", "zero.png"), "wb").close()
    write_text(os.path.join(root, "README.txt"), "not an image, not listed\n")
    if duplicate:
        shutil.copy(os.path.join(root, "1.png"), os.path.join(root, "more", "z_copy.png"))
    return root


def build_ffhq(root: str, *, side: int = 64) -> dict:
    """FFHQ layout with ffhq-dataset-v2.json: 00000-00002 with records (00002's MD5 is wrong on
    purpose), 00003 without a record (hash split)."""
    records = {}
    for index in range(4):
        relative = f"images1024x1024/00000/{index:05d}.png"
        path = os.path.join(root, *relative.split("/"))
        write_png(path, cv2.cvtColor(picture(side, side, 20 + index), cv2.COLOR_RGB2BGR))
        if index == 3:
            continue
        with open(path, "rb") as fh:
            md5 = hashlib.md5(fh.read()).hexdigest()
        records[str(index)] = {
            "category": "validation" if index == 1 else "training",
            "metadata": {"photo_url": f"https://www.flickr.com/photos/x/{index}/", "photo_title": "t",
                         "author": f"author{index}", "country": "", "license": "Attribution License",
                         "license_url": "https://creativecommons.org/licenses/by/2.0/", "date_uploaded": "2010-01-01"},
            "image": {"file_url": "https://drive.google.com/uc?id=x", "file_path": relative, "file_size": 1,
                      "file_md5": md5 if index != 2 else "0" * 32, "pixel_size": [side, side], "pixel_md5": "",
                      "face_landmarks": [[float(10 + k % 40), float(12 + k // 2)] for k in range(68)]},
            "thumbnail": {"file_path": f"thumbnails128x128/00000/{index:05d}.png"},
            "in_the_wild": {"file_path": f"in-the-wild-images/00000/{index:05d}.png", "face_rect": [1, 2, 3, 4]},
        }
    write_text(os.path.join(root, "ffhq-dataset-v2.json"), json.dumps(records, indent=1))
    return {"root": root, "records": records}
