"""Builds `imagenet_superclasses.json`: ImageNet-1k class (WordNet id) -> WordNet super-class.

Offline, from the WordNet 3.0 database files (Debian: `apt-get install wordnet-base`, or
`apt-get download wordnet-base && dpkg -x wordnet-base_*.deb DIR`, files in
`DIR/usr/share/wordnet`). ImageNet ids are WordNet 3.0 noun offsets ("n01440764" is
offset 01440764 in `data.noun`). Each class's super-class is its highest ancestor on its
first hypernym path that covers at most `max_size` ImageNet classes, so the super-classes
are the broadest WordNet synsets of bounded size (dogs split into hunting dogs, working
dogs, ...; vehicles, musical instruments, ... stay whole).

    python -m himl.data.make_imagenet_hierarchy /usr/share/wordnet --max_size 50 --min_size 3

The class list (1,000 WordNet ids) is read from tensorflow-datasets' `imagenet2012`
label file, which ships with the package.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

OUT = Path(__file__).parent / "imagenet_superclasses.json"


def imagenet_wnids() -> list[str]:
    import tensorflow_datasets as tfds

    path = Path(tfds.__file__).parent / "datasets" / "imagenet2012" / "labels.txt"
    return path.read_text().split()


def read_nouns(wordnet_dir: Path) -> tuple[dict, dict]:
    """({offset: first hypernym offset}, {offset: first lemma}) from `data.noun`."""
    parent, name = {}, {}
    with open(wordnet_dir / "data.noun", encoding="utf-8") as f:
        lines = f.readlines()
    for line in lines:
        if line.startswith("  "):  # licence header
            continue
        fields = line.split()
        offset, num_words = fields[0], int(fields[3], 16)
        name[offset] = fields[4].replace("_", " ")
        k = 4 + 2 * num_words
        pointers = int(fields[k])
        for p in range(pointers):
            symbol, target, pos = fields[k + 1 + 4 * p : k + 4 + 4 * p]
            if symbol in ("@", "@i") and pos == "n" and offset not in parent:
                parent[offset] = target
    return parent, name


def path_to_root(offset: str, parent: dict) -> list[str]:
    path = [offset]
    while path[-1] in parent:
        path.append(parent[path[-1]])
    return path[::-1]  # root first


def build(wordnet_dir: Path, max_size: int, min_size: int) -> dict:
    """{wnid: {"superclass", "superclass_name", "name"}} for the 1,000 ImageNet classes.

    A class's super-class is its highest WordNet ancestor covering at most `max_size`
    ImageNet classes (never the class itself); super-classes left with fewer than
    `min_size` classes move one ancestor up until they are big enough.
    """
    parent, name = read_nouns(wordnet_dir)
    wnids = imagenet_wnids()
    paths = {w: path_to_root(w[1:], parent) for w in wnids}
    covers = collections.Counter(a for p in paths.values() for a in p)
    level = {}
    for w, path in paths.items():
        k = next(i for i, a in enumerate(path) if covers[a] <= max_size)
        level[w] = min(k, len(path) - 2)  # never the class itself
    for _ in range(20):
        size = collections.Counter(paths[w][k] for w, k in level.items())
        small = [w for w, k in level.items() if size[paths[w][k]] < min_size and k > 0]
        if not small:
            break
        for w in small:
            level[w] -= 1
    mapping = {}
    for w, path in paths.items():
        k = level[w]
        mapping[w] = {
            "superclass": "n" + path[k],
            "superclass_name": name[path[k]],
            "name": name[w[1:]],
        }
    return mapping


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wordnet_dir", type=Path)
    parser.add_argument("--max_size", type=int, default=50)
    parser.add_argument("--min_size", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    mapping = build(args.wordnet_dir, args.max_size, args.min_size)
    args.out.write_text(json.dumps(mapping, indent=0, sort_keys=True) + "\n")
    counts = collections.Counter(v["superclass_name"] for v in mapping.values())
    print(f"{len(mapping)} classes -> {len(counts)} super-classes; largest {counts.most_common(8)}")


if __name__ == "__main__":
    main()
