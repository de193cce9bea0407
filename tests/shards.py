"""Split a GGUF model into shards the way llama.cpp's gguf-split does (tools/gguf-split/gguf-split.cpp),
with gguf-py's writer: the first shard holds all metadata followed by `split.no` (u16), `split.count`
(u16) and `split.tensors.count` (i32); later shards hold only those three keys; tensors keep their order
and are cut into consecutive groups; files are named like llama_split_path: PREFIX-0000k-of-0000N.gguf."""

from __future__ import annotations

from pathlib import Path


def write_shards(source: Path, prefix: Path, n: int) -> list[Path]:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    tensors = list(reader.tensors)
    per = -(-len(tensors) // n)
    paths = []
    for k in range(n):
        path = Path(f"{prefix}-{k + 1:05d}-of-{n:05d}.gguf")
        w = gguf.GGUFWriter(path, arch)
        if k == 0:
            for name, f in reader.fields.items():
                if name.startswith("GGUF.") or name == "general.architecture":
                    continue
                vtype = f.types[0]
                sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
                w.add_key_value(name, f.contents(), vtype, sub)
        else:
            w.kv_data[0].clear()  # gguf-split's later shards carry the split keys only
        w.add_uint16("split.no", k)
        w.add_uint16("split.count", n)
        w.add_int32("split.tensors.count", len(tensors))
        for t in tensors[k * per : (k + 1) * per]:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        paths.append(path)
    return paths
