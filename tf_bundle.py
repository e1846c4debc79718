"""Read and write TensorFlow V2 checkpoints ("tensor bundles") without TensorFlow: numpy and crc32c only.

This is the format ``tf.train.Saver`` writes and OpenAI published GPT-2's weights in; weights.py reads GPT-2's
released checkpoints through it, as it reads safetensors files through the safetensors package. No TF counterpart
(TensorFlow's own tensorflow/core/util/tensor_bundle and tensorflow/core/lib/io/table implement it).
A checkpoint ``<prefix>`` is a set of files:

``<prefix>.index``
    A LevelDB-style sorted string table (TensorFlow's ``tensorflow/core/lib/io/table``).
    Layout: data blocks, a metaindex block (empty), an index block, then a 48-byte footer:
    two BlockHandles (offset, size as varint64) padded with zeros to 40 bytes, then the
    little-endian fixed64 magic 0xdb4775248b80fb57.  Every block is followed by a 5-byte
    trailer: compression type (0 = none; TF's BundleWriter never compresses) and the
    masked CRC32C of the block plus that type byte.  A block holds entries
    ``varint32 shared, varint32 non_shared, varint32 value_len, key[shared:], value``
    (keys prefix-compressed against the previous key, restarting with a full key every 16
    entries in data blocks, at every entry in the index block), then the uint32 restart
    offsets and their count.  Each index entry maps a separator key (>= every key of its
    data block, < every key of the next) to the BlockHandle of that data block.
    TensorFlow cuts a data block once its size estimate reaches 262144 bytes.
    The first key is "" and its value a serialized BundleHeaderProto (1: num_shards,
    2: endianness 0=LITTLE/1=BIG, 3: VersionDef{1: producer, 2: min_consumer,
    3: bad_consumers}); every other key is a tensor name whose value is a serialized
    BundleEntryProto (1: dtype (types.proto DataType), 2: TensorShapeProto{2: dim{1: size,
    2: name}, 3: unknown_rank}, 3: shard_id, 4: offset, 5: size, 6: crc32c as fixed32,
    7: slices of a partitioned variable).
``<prefix>.data-SSSSS-of-NNNNN``
    The raw little-endian C-order bytes of the tensors, packed back to back without
    padding, in key order; ``crc32c`` in the entry is the masked CRC32C of those bytes.
``checkpoint`` (beside it)
    A text-format CheckpointState naming the latest prefix relative to its directory.

Masked CRC32C is TensorFlow's ``((crc >> 15 | crc << 17) + 0xa282ead8) mod 2**32``.
bfloat16 tensors are returned widened to float32 (exact); everything else keeps its dtype.
Every defect is reported as a one-line ``untrusted.BadFile`` (``untrusted.MissingFile`` for a
missing file) that names the file, says what is wrong and what to do.

The files are untrusted (docs/trust.md): only regular files are read (no FIFO, device, or link
leaving the checkpoint's folder), every path the ``checkpoint`` file names stays inside its
folder, the index is at most INDEX_MAX_BYTES, a key at most MAX_KEY_BYTES (the keys built from
prefix compression at most KEY_BYTES_PER_BYTE times the index's size), a protobuf message at
most MAX_FIELDS fields, a shape at most MAX_TF_DIMS dimensions; every tensor's byte range is checked
against the data file's size on disk before anything is allocated, ranges of different tensors
may not overlap, and each is read at most once (a caller may skip the tensors it does not use).
"""

import collections
import math
import os
import struct
import types

import crc32c as crc32c_lib
import numpy as np

import untrusted
from untrusted import bad

__all__ = [
    'TFCheckpoint',
    'TensorEntry',
    'latest_checkpoint',
    'read_tf_checkpoint',
    'tf_checkpoint_entries',
    'verify_tf_checkpoint',
    'write_tf_checkpoint',
]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
HANDLE_AREA_SIZE = 40
BLOCK_TRAILER_SIZE = 5
BLOCK_SIZE = 262144
RESTART_INTERVAL = 16
BUNDLE_VERSION = 1
MASK_DELTA = 0xA282EAD8

# Bounds on what an index may hold. GPT-2 1558M's index is about 30 KB (580 tensors, names under 64 bytes); a
# tensor's entry costs a few hundred bytes of Python objects once decoded, so an index of INDEX_MAX_BYTES decodes
# in well under 1 GB whatever it holds.
INDEX_MAX_BYTES = 4 << 20      # about 50,000 tensors
MAX_KEY_BYTES = 1024           # a tensor name (TensorFlow's longest real ones are around 200 bytes)
KEY_BYTES_PER_BYTE = 16        # keys rebuilt from prefix compression: at most this many bytes per index byte
KEY_BYTES_SLACK = 1 << 20      # ... plus this much
MAX_FIELDS = 1024              # fields of one protobuf message (an entry has 6, a shape one per dimension)
MAX_TF_DIMS = 32               # dimensions of a tensor (numpy's limit is 32 before numpy 2, 64 since)
STATE_MAX_BYTES = 1 << 20      # the `checkpoint` file: a few lines

_FIX_INDEX = 'the index is damaged or incomplete: download the checkpoint again'
_FIX_DATA = 'the data file is damaged: download the checkpoint again'

# TensorFlow DataType enum -> (name, numpy dtype of the stored little-endian bytes).
_DTYPES = types.MappingProxyType({
    1: ('float32', '<f4'),
    2: ('float64', '<f8'),
    3: ('int32', '<i4'),
    4: ('uint8', '|u1'),
    5: ('int16', '<i2'),
    6: ('int8', '|i1'),
    8: ('complex64', '<c8'),
    9: ('int64', '<i8'),
    10: ('bool', '|b1'),
    14: ('bfloat16', '<u2'),
    17: ('uint16', '<u2'),
    18: ('complex128', '<c16'),
    19: ('float16', '<f2'),
    22: ('uint32', '<u4'),
    23: ('uint64', '<u8'),
})
# Names of the DataType values this module cannot hold as plain numpy arrays.
_OTHER_DTYPE_NAMES = types.MappingProxyType({
    0: 'invalid', 7: 'string', 11: 'qint8', 12: 'quint8', 13: 'qint32', 15: 'qint16',
    16: 'quint16', 20: 'resource', 21: 'variant',
})
# (numpy kind, itemsize) -> DataType, for the writer.
_ENUM_OF_KIND = types.MappingProxyType({
    ('f', 4): 1, ('f', 8): 2, ('i', 4): 3, ('u', 1): 4, ('i', 2): 5, ('i', 1): 6,
    ('c', 8): 8, ('i', 8): 9, ('b', 1): 10, ('u', 2): 17, ('c', 16): 18, ('f', 2): 19,
    ('u', 4): 22, ('u', 8): 23,
})
_BFLOAT16 = 14

TensorEntry = collections.namedtuple(
    'TensorEntry', 'name dtype shape shard offset size crc32c')
TensorEntry.__doc__ = "A tensor's index entry: dtype name, shape, shard, byte range, masked CRC32C."
_Header = collections.namedtuple('_Header', 'num_shards endianness producer min_consumer bad')
_Handle = collections.namedtuple('_Handle', 'offset size')
_Record = collections.namedtuple('_Record', 'name dtype_enum shape data')


class _Problem(Exception):
    """A defect found while decoding; the caller adds the file name."""

    def __init__(self, what, fix=_FIX_INDEX):
        """Record what is wrong and the advice to give."""
        super().__init__(what)
        self.fix = fix


# --------------------------------------------------------------------------- CRC32C


def crc32c(data):
    """Return the CRC32C (Castagnoli) of bytes, by the maintained `crc32c` package."""
    return crc32c_lib.crc32c(data)


def mask_crc(crc):
    """Return TensorFlow's masked form of a CRC32C value."""
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


# --------------------------------------------------------------- protobuf decoding


def _varint(buf, pos, end, max_bytes=10):
    """Decode a minimally encoded base-128 varint in buf[pos:end]; return (value, next pos)."""
    value = 0
    for i in range(max_bytes):
        if pos + i >= end:
            raise _Problem(f'a varint at byte {pos} runs past the end of its record')
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise _Problem(f'the varint at byte {pos} is not minimally encoded')
            return value, pos + i + 1
    raise _Problem(f'the varint at byte {pos} is longer than {max_bytes} bytes')


def _proto_fields(data, what):
    """Split a serialized protobuf message into (field number, wire type, value) triples."""
    fields, pos, end = [], 0, len(data)
    try:
        while pos < end:
            tag, pos = _varint(data, pos, end)
            number, wire = tag >> 3, tag & 7
            if number == 0 or number >= 1 << 29:
                raise _Problem(f'field number {number} is invalid')
            if wire == 0:
                value, pos = _varint(data, pos, end)
            elif wire in (1, 5):
                width = 8 if wire == 1 else 4
                if pos + width > end:
                    raise _Problem(f'a fixed{width * 8} field runs past the end')
                value = int.from_bytes(data[pos:pos + width], 'little')
                pos += width
            elif wire == 2:
                length, pos = _varint(data, pos, end)
                if length > end - pos:
                    raise _Problem(f'a {length}-byte field runs past the end')
                value, pos = bytes(data[pos:pos + length]), pos + length
            else:
                raise _Problem(f'wire type {wire} (field {number}) is not used by this format')
            if len(fields) >= MAX_FIELDS:
                raise _Problem(f'it has more than {MAX_FIELDS} fields, more than any message of this format')
            fields.append((number, wire, value))
    except _Problem as exc:
        raise _Problem(f'{what} is not a valid protobuf message: {exc}') from None
    return fields


def _last(fields, number, wire, what, default):
    """Return the last value of a singular field, checking its wire type."""
    value = default
    for num, w, v in fields:
        if num == number:
            if w != wire:
                raise _Problem(f'{what}: field {number} has wire type {w}, expected {wire}')
            value = v
    return value


def _signed(value, bits, what):
    """Interpret a decoded varint as a two's-complement integer that must fit in `bits`."""
    if value >= 1 << 63:
        value -= 1 << 64
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise _Problem(f'{what} = {value} does not fit in int{bits}')
    return value


def _int_field(fields, number, bits, what):
    """Return a singular int32/int64/enum field (0 when absent)."""
    return _signed(_last(fields, number, 0, what, 0), bits, what)


def _repeated_ints(fields, number, what):
    """Return a repeated int32 field, packed or not."""
    values = []
    for num, wire, value in fields:
        if num != number:
            continue
        if wire == 0:
            values.append(_signed(value, 32, what))
        elif wire == 2:
            pos = 0
            while pos < len(value) and len(values) <= MAX_FIELDS:
                item, pos = _varint(value, pos, len(value))
                values.append(_signed(item, 32, what))
        else:
            raise _Problem(f'{what} has wire type {wire}')
        if len(values) > MAX_FIELDS:
            raise _Problem(f'{what} lists more than {MAX_FIELDS} values')
    return values


# ------------------------------------------------------------------ table decoding


def _parse_footer(buf):
    """Return the (metaindex, index) BlockHandles from the table footer."""
    if len(buf) < FOOTER_SIZE:
        raise _Problem(f'it is {len(buf)} bytes long, shorter than the {FOOTER_SIZE}-byte '
                       f'table footer{_sniff(buf)}')
    footer = buf[len(buf) - FOOTER_SIZE:]
    magic = int.from_bytes(footer[HANDLE_AREA_SIZE:], 'little')
    if magic != TABLE_MAGIC:
        raise _Problem(f'it does not end with the table magic number (found 0x{magic:016x}, '
                       f'expected 0x{TABLE_MAGIC:016x}){_sniff(buf)}')
    handles, pos = [], 0
    for _ in range(4):
        value, pos = _varint(footer, pos, HANDLE_AREA_SIZE)
        handles.append(value)
    if any(footer[pos:HANDLE_AREA_SIZE]):
        raise _Problem("the footer's padding after the block handles is not all zero")
    return _Handle(*handles[:2]), _Handle(*handles[2:])


def _sniff(buf):
    """Return a hint about what a non-index file looks like, or ''."""
    head = bytes(buf[:64]).lstrip().lower()
    if head.startswith(b'version https://git-lfs'):
        return ' (it is a Git LFS pointer, not the file itself)'
    if head.startswith((b'<!doctype', b'<html', b'<?xml')):
        return ' (it is an HTML/XML page, not the file itself)'
    return ''


def _read_block(buf, handle, limit, what):
    """Return a block's contents after checking its bounds, trailer CRC and compression."""
    end = handle.offset + handle.size
    if end + BLOCK_TRAILER_SIZE > limit:
        raise _Problem(f'the {what} at bytes {handle.offset}..{end} (+{BLOCK_TRAILER_SIZE}-byte '
                       f"trailer) lies outside the table's {limit} bytes")
    contents = buf[handle.offset:end + 1]
    stored = int.from_bytes(buf[end + 1:end + BLOCK_TRAILER_SIZE], 'little')
    actual = mask_crc(crc32c(contents))
    if stored != actual:
        raise _Problem(f'the {what} at bytes {handle.offset}..{end} fails its CRC32C check '
                       f'(stored 0x{stored:08x}, computed 0x{actual:08x})')
    kind = buf[end]
    if kind == 1:
        raise _Problem(f'the {what} at bytes {handle.offset}..{end} is snappy-compressed, '
                       'which this reader does not support',
                       're-save the checkpoint with tf.train.Saver, which writes it uncompressed')
    if kind != 0:
        raise _Problem(f'the {what} at bytes {handle.offset}..{end} has unknown compression '
                       f'type {kind}')
    return contents[:-1]


class _KeyBudget:
    """The bytes of keys a table may still rebuild from prefix compression: keys sharing the whole previous key grow
    quadratically with the entries, so their total is bounded by the table's size before any is built."""

    def __init__(self, table_size):
        """Allow KEY_BYTES_PER_BYTE bytes of keys per table byte, plus KEY_BYTES_SLACK."""
        self.left = KEY_BYTES_PER_BYTE * table_size + KEY_BYTES_SLACK

    def take(self, length, where):
        """Account for one key of length bytes, refused when longer than any name or over the total."""
        if length > MAX_KEY_BYTES:
            raise _Problem(f'{where} has a {length}-byte key, longer than any tensor name ({MAX_KEY_BYTES} bytes '
                           'at most)')
        self.left -= length
        if self.left < 0:
            raise _Problem(f'{where}: its keys add up to more than {KEY_BYTES_PER_BYTE} bytes per byte of the '
                           'index, more than any checkpoint holds')


def _block_entries(block, what, budget=None):
    """Decode a block's prefix-compressed entries into a list of (key, value) bytes pairs (every key checked against
    the budget before it is built: by default the block's own)."""
    budget = _KeyBudget(len(block)) if budget is None else budget
    size = len(block)
    if size < 4:
        raise _Problem(f'the {what} is {size} bytes, too short for its restart count')
    count = int.from_bytes(block[size - 4:], 'little')
    if count < 1 or count > (size - 4) // 4:
        raise _Problem(f'the {what} claims {count} restart points, impossible in {size} bytes')
    limit = size - 4 - 4 * count
    restarts = [int.from_bytes(block[limit + 4 * i:limit + 4 * i + 4], 'little')
                for i in range(count)]
    entries, starts, key, pos = [], set(), b'', 0
    while pos < limit:
        starts.add(pos)
        where = f"the {what}'s entry at byte {pos}"
        shared, pos = _varint(block, pos, limit, 5)
        unshared, pos = _varint(block, pos, limit, 5)
        value_len, pos = _varint(block, pos, limit, 5)
        if shared > len(key):
            raise _Problem(f'{where} shares {shared} bytes with a {len(key)}-byte key')
        if unshared + value_len > limit - pos:
            raise _Problem(f"{where} runs past the end of the block's entries")
        budget.take(shared + unshared, where)
        key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        entries.append((key, bytes(block[pos:pos + value_len])))
        pos += value_len
    _check_restarts(restarts, starts, entries, block, what)
    return entries


def _check_restarts(restarts, starts, entries, block, what):
    """Check that restart points are increasing entry starts holding full keys."""
    if restarts[0] != 0 or any(a >= b for a, b in zip(restarts, restarts[1:])):
        raise _Problem(f"the {what}'s restart points {restarts[:4]}... are not increasing from 0")
    for offset in restarts:
        if not entries and offset == 0:
            continue
        if offset not in starts or block[offset] != 0:
            raise _Problem(f"the {what}'s restart point {offset} is not the start of a full key")


def _table_items(buf):
    """Decode a whole table into its sorted (key, value) pairs, checking its layout."""
    meta_handle, index_handle = _parse_footer(buf)
    budget = _KeyBudget(len(buf))
    footer_start = len(buf) - FOOTER_SIZE
    index = _read_block(buf, index_handle, footer_start, 'index block')
    meta = _read_block(buf, meta_handle, footer_start, 'metaindex block')
    if index_handle.offset + index_handle.size + BLOCK_TRAILER_SIZE != footer_start:
        raise _Problem('the index block does not end where the footer starts')
    if meta_handle.offset + meta_handle.size + BLOCK_TRAILER_SIZE != index_handle.offset:
        raise _Problem('the metaindex block does not end where the index block starts')
    _block_entries(meta, 'metaindex block', budget)
    items, next_offset, previous = [], 0, None
    for number, (separator, encoded) in enumerate(_block_entries(index, 'index block', budget)):
        what = f'data block {number}'
        handle = _decode_handle(encoded, what)
        if handle.offset != next_offset:
            raise _Problem(f'{what} starts at byte {handle.offset}, expected {next_offset} '
                           '(blocks must follow each other)')
        block_items = _block_entries(_read_block(buf, handle, meta_handle.offset, what), what, budget)
        _check_separators(block_items, previous, separator, what)
        items.extend(block_items)
        next_offset = handle.offset + handle.size + BLOCK_TRAILER_SIZE
        previous = separator
    if next_offset != meta_handle.offset:
        raise _Problem('the data blocks do not end where the metaindex block starts')
    _check_keys(items)
    return items


def _decode_handle(encoded, what):
    """Decode an index entry's value: a BlockHandle filling it exactly."""
    offset, pos = _varint(encoded, 0, len(encoded))
    size, pos = _varint(encoded, pos, len(encoded))
    if pos != len(encoded):
        raise _Problem(f'the index entry of {what} has {len(encoded) - pos} stray bytes '
                       'after its block handle')
    return _Handle(offset, size)


def _check_separators(block_items, previous, separator, what):
    """Check a data block's keys lie above the previous separator and up to its own."""
    if not block_items:
        raise _Problem(f'{what} is empty')
    if previous is not None and block_items[0][0] <= previous:
        raise _Problem(f"{what} starts with a key not above the previous block's separator")
    if block_items[-1][0] > separator:
        raise _Problem(f'{what} holds keys above its index separator')


def _check_keys(items):
    """Check that the table's keys strictly increase and start with the header key ''."""
    if not items or items[0][0] != b'':
        raise _Problem("the table does not start with the bundle header entry (key '')")
    for (a, _), (b, _) in zip(items, items[1:]):
        if b <= a:
            raise _Problem(f'key {b!r} does not sort after key {a!r}')


# ----------------------------------------------------------------- bundle decoding


def _parse_header(value):
    """Decode and check the BundleHeaderProto."""
    fields = _proto_fields(value, 'the bundle header')
    version = _proto_fields(_last(fields, 3, 2, 'header version', b''), 'the header version')
    header = _Header(
        num_shards=_int_field(fields, 1, 32, 'header num_shards'),
        endianness=_int_field(fields, 2, 32, 'header endianness'),
        producer=_int_field(version, 1, 32, 'version producer'),
        min_consumer=_int_field(version, 2, 32, 'version min_consumer'),
        bad=_repeated_ints(version, 3, 'version bad_consumers'))
    if header.num_shards < 1:
        raise _Problem(f'the header says the checkpoint has {header.num_shards} data shards')
    if header.endianness == 1:
        raise _Problem('the checkpoint was written on a big-endian machine, which this reader '
                       'does not support', 're-save it on a little-endian (x86/ARM) machine')
    if header.endianness != 0:
        raise _Problem(f"the header's endianness {header.endianness} is neither LITTLE nor BIG")
    if header.producer < 0:
        raise _Problem(f"the header's producer version {header.producer} is negative")
    if header.min_consumer > BUNDLE_VERSION or BUNDLE_VERSION in header.bad:
        raise _Problem(f'the checkpoint format (producer {header.producer}, min_consumer '
                       f'{header.min_consumer}, bad_consumers {header.bad}) is newer than '
                       f'version {BUNDLE_VERSION} this reader implements',
                       're-save it with tf.train.Saver from TensorFlow 1.x/2.x')
    return header


def _parse_shape(data, name):
    """Decode a TensorShapeProto into a tuple of dimension sizes."""
    fields = _proto_fields(data, f'the shape of tensor {name!r}')
    if _last(fields, 3, 0, 'shape unknown_rank', 0):
        raise _Problem(f'tensor {name!r} has a shape of unknown rank')
    dims = []
    for number, wire, value in fields:
        if number != 2:
            continue
        if wire != 2:
            raise _Problem(f'the shape of tensor {name!r} has a dim of wire type {wire}')
        if len(dims) >= MAX_TF_DIMS:
            raise _Problem(f'tensor {name!r} has more than {MAX_TF_DIMS} dimensions, more than any array can have')
        size = _int_field(_proto_fields(value, f'a dim of tensor {name!r}'), 1, 64, 'dim size')
        if size < 0:
            raise _Problem(f'tensor {name!r} has a dimension of unknown size ({size})')
        dims.append(size)
    return tuple(dims)


def _dtype_name(enum):
    """Return a readable name for a DataType enum value."""
    if enum in _DTYPES:
        return _DTYPES[enum][0]
    if enum in _OTHER_DTYPE_NAMES:
        return _OTHER_DTYPE_NAMES[enum]
    if 100 < enum < 200:
        return f'{_dtype_name(enum - 100)}_ref'
    return f'DataType {enum}'


def _parse_entry(key, value, num_shards):
    """Decode and check one tensor's BundleEntryProto."""
    try:
        name = key.decode('utf-8')
    except UnicodeDecodeError:
        raise _Problem(f'the tensor name {key!r} is not valid UTF-8') from None
    fields = _proto_fields(value, f'the entry of tensor {name!r}')
    if any(number == 7 for number, _, _ in fields):
        raise _Problem(f'tensor {name!r} is a partitioned variable (its entry lists slices), '
                       'and partitioned variables are not supported',
                       're-save the model without a partitioner')
    enum = _int_field(fields, 1, 32, 'entry dtype')
    if enum not in _DTYPES:
        raise _Problem(f'tensor {name!r} has dtype {_dtype_name(enum)}, which this reader '
                       'does not support (it reads fixed-width numeric and bool tensors)',
                       'convert that tensor to float32 with TensorFlow, or drop it')
    shape = _parse_shape(_last(fields, 2, 2, 'entry shape', b''), name)
    entry = TensorEntry(
        name=name, dtype=_DTYPES[enum][0], shape=shape,
        shard=_int_field(fields, 3, 32, 'entry shard_id'),
        offset=_int_field(fields, 4, 64, 'entry offset'),
        size=_int_field(fields, 5, 64, 'entry size'),
        crc32c=_last(fields, 6, 5, 'entry crc32c', 0))
    _check_entry(entry, enum, num_shards)
    return entry


def _check_entry(entry, enum, num_shards):
    """Check an entry's shard, offset and size against its header, dtype and shape."""
    if not 0 <= entry.shard < num_shards:
        raise _Problem(f'tensor {entry.name!r} is in shard {entry.shard}, but the checkpoint '
                       f'has {num_shards}')
    if entry.offset < 0:
        raise _Problem(f'tensor {entry.name!r} has a negative offset {entry.offset}')
    itemsize = np.dtype(_DTYPES[enum][1]).itemsize
    if math.prod(max(dim, 1) for dim in entry.shape) * itemsize >= 1 << 63:
        raise _Problem(f'tensor {entry.name!r} has shape {list(entry.shape)}, larger than any array can be')
    expected = math.prod(entry.shape) * itemsize
    if entry.size != expected:
        raise _Problem(f'tensor {entry.name!r} ({entry.dtype} {list(entry.shape)}) has size '
                       f'{entry.size} bytes, expected {expected}')


def _parse_index(buf):
    """Decode a whole .index file into its header and tensor entries."""
    items = _table_items(buf)
    header = _parse_header(items[0][1])
    entries = [_parse_entry(key, value, header.num_shards) for key, value in items[1:]]
    return header, entries


def _missing_index_hint(prefix):
    """Return advice for a prefix whose .index file is missing."""
    if os.path.isdir(prefix):
        return (f'{prefix} is a directory; pass the checkpoint prefix inside it (e.g. '
                f"{os.path.join(prefix, 'model.ckpt')}; latest_checkpoint() reads it from the "
                "'checkpoint' file)")
    for suffix in ('.index', '.meta', '.data-'):
        if suffix in os.path.basename(prefix):
            return 'pass the checkpoint prefix without its suffix (e.g. .../model.ckpt)'
    return 'download the checkpoint (its .index and .data-*-of-* files) or fix the path'


def _folder(path):
    """Return the folder that holds path (the files of a checkpoint must stay inside it)."""
    return os.path.dirname(os.path.abspath(path))


def _data_path(prefix, shard, num_shards):
    """Return the file name of one data shard."""
    return f'{prefix}.data-{shard:05d}-of-{num_shards:05d}'


# ------------------------------------------------------------------- public reader


class TFCheckpoint:
    """A checkpoint's decoded index: `entries` ({name: TensorEntry}, in key order) and `index_path`; `read` and
    `verify` read its data files, each tensor's byte range at most once.

    prefix: the checkpoint prefix (no suffix); index_path: the index file to read instead of `<prefix>.index` (e.g.
    a download's .part). Raises a BadFile naming the index (a MissingFile when it is missing)."""

    def __init__(self, prefix, index_path=None):
        """Read and decode the index (at most INDEX_MAX_BYTES, a regular file inside the prefix's folder)."""
        self.prefix = untrusted.check_path_text(prefix, 'checkpoint prefix')
        self.index_path = f'{self.prefix}.index' if index_path is None else untrusted.check_path_text(index_path)
        with untrusted.reading(self.index_path):
            buf = untrusted.read_bytes(self.index_path, _folder(self.prefix if index_path is None else
                                                                 self.index_path),
                                       INDEX_MAX_BYTES, 'TensorFlow checkpoint index',
                                       missing=_missing_index_hint(self.prefix))
            try:
                self.header, entries = _parse_index(memoryview(buf))
            except _Problem as exc:
                raise bad(self.index_path, f'is not a usable TensorFlow checkpoint index: {exc}; {exc.fix}') from None
        self.entries = {entry.name: entry for entry in entries}
        self.by_shard = collections.defaultdict(list)  # shard -> its entries (one pass: shards can be many)
        for entry in entries:
            self.by_shard[entry.shard].append(entry)

    def data_path(self, shard):
        """Return the file name of one data shard."""
        return _data_path(self.prefix, shard, self.header.num_shards)

    def _refuse(self, what):
        """Return the BadFile 'index_path: what'."""
        return bad(self.index_path, what)

    def _check_dtype(self, entries, dtype):
        """Refuse an entry whose dtype is not dtype (when given), naming the tensor and the index."""
        for entry in entries:
            if dtype is not None and entry.dtype != dtype:
                raise self._refuse(f'tensor {entry.name!r} has dtype {entry.dtype}, not {dtype} as this model '
                                   f'stores it: a different or damaged file (nothing is cast); download it again')

    def _check_ranges(self, shard, path, size):
        """Check that the tensors of one shard lie inside its size bytes and that no two share a byte."""
        own = sorted(self.by_shard[shard], key=lambda entry: (entry.offset, entry.size))
        for entry in own:
            end = entry.offset + entry.size
            if end > size:
                raise bad(path, f'is truncated: tensor {entry.name!r} needs bytes {entry.offset}..{end}, the file '
                                f'has {size}; download it again')
        filled = [entry for entry in own if entry.size]
        for first, second in zip(filled, filled[1:]):
            if second.offset < first.offset + first.size:
                raise self._refuse(f'tensors {first.name!r} and {second.name!r} overlap in {path} (bytes '
                                   f'{first.offset}..{first.offset + first.size} and {second.offset}..'
                                   f'{second.offset + second.size}): {_FIX_INDEX}')
        return own

    def _open(self, shard, path):
        """Open one data shard (a regular file inside the checkpoint's folder); return (file, size)."""
        count = len(self.by_shard[shard])
        handle = untrusted.open_regular(
            path, _folder(self.prefix),
            missing=f'{self.index_path} stores {count} tensors in it; download it too (a checkpoint is its .index '
                    'plus every .data-*-of-* file)')
        return handle, os.fstat(handle.fileno()).st_size

    def read(self, names=None, dtype=None):
        """Return {name: numpy array} of the tensors named (default: every one), each read once and checked against
        its CRC32C; the others' data is not read. dtype: the only dtype name the tensors read may have (e.g.
        'float32'): another is refused before any data is read."""
        selected = list(self.entries.values()) if names is None else [self.entries[name] for name in names]
        self._check_dtype(selected, dtype)
        arrays, wanted = {}, collections.defaultdict(list)
        for entry in selected:
            wanted[entry.shard].append(entry)
        for shard in sorted(wanted):
            path = self.data_path(shard)
            with untrusted.reading(path):
                handle, size = self._open(shard, path)
                with handle:
                    self._check_ranges(shard, path, size)  # every size against the disk before any allocation
                    for entry in wanted[shard]:
                        arrays[entry.name] = _read_tensor(path, handle, entry)
        return {entry.name: arrays[entry.name] for entry in selected}

    def verify(self, data_paths=None, chunk_size=1 << 24, dtype=None):
        """Check every tensor against its stored CRC32C and every data file's size against the index, reading the
        data in chunks (no tensor is built: a 6 GB checkpoint needs no 6 GB of memory); raise a one-line BadFile.
        data_paths maps a shard number to its file (default: the index's names); dtype as for read."""
        self._check_dtype(self.entries.values(), dtype)
        for shard in sorted(self.by_shard):
            path = untrusted.check_path_text((data_paths or {}).get(shard, self.data_path(shard)))
            with untrusted.reading(path):
                handle, size = self._open(shard, path)
                with handle:
                    own = self._check_ranges(shard, path, size)
                    for entry in own:
                        _check_crc(path, handle, entry, chunk_size)
            end = max((entry.offset + entry.size for entry in own), default=0)
            if size != end:
                raise bad(path, f'has {size} bytes but {self.index_path} places its tensors in {end}: a different '
                                'or damaged file; download it again')


def _check_crc(path, handle, entry, chunk_size):
    """Check one tensor's bytes against its CRC32C, reading them in chunks."""
    handle.seek(entry.offset)
    crc, left = 0, entry.size
    while left:
        chunk = handle.read(min(chunk_size, left))
        if not chunk:
            raise bad(path, f'is truncated: tensor {entry.name!r} needs bytes {entry.offset}..'
                            f'{entry.offset + entry.size}; download it again')
        crc = crc32c_lib.crc32c(chunk, crc)
        left -= len(chunk)
    if mask_crc(crc) != entry.crc32c:
        raise bad(path, f'tensor {entry.name!r} (bytes {entry.offset}..{entry.offset + entry.size}) fails its '
                        f'CRC32C check; {_FIX_DATA}')


def tf_checkpoint_entries(prefix, index_path=None):
    """Return {name: TensorEntry} from `<prefix>.index` (or the index file at index_path, e.g. a download's .part)
    without reading any tensor data."""
    with untrusted.reading(index_path if index_path is not None else prefix):
        return TFCheckpoint(prefix, index_path).entries


def read_tf_checkpoint(prefix, names=None, dtype=None):
    """Return {name: numpy array} for every tensor of the checkpoint `prefix` (no suffix), or only those named;
    dtype: the only dtype name they may have (TFCheckpoint.read)."""
    with untrusted.reading(prefix):
        return TFCheckpoint(prefix).read(names, dtype)


def verify_tf_checkpoint(prefix, data_paths=None, chunk_size=1 << 24, dtype=None):
    """Check every tensor of the checkpoint `prefix` against its stored CRC32C and every data file's size against the
    index, reading the data in chunks (TFCheckpoint.verify); raise the reader's one-line BadFile."""
    with untrusted.reading(prefix):
        TFCheckpoint(prefix).verify(data_paths, chunk_size, dtype)


def _read_tensor(path, handle, entry):
    """Read one tensor's bytes (its range already checked against the file's size), check their CRC32C and return
    them as an array."""
    stored = _stored_dtype(entry.dtype)
    data = bytearray(entry.size)
    handle.seek(entry.offset)
    got = handle.readinto(data) if entry.size else 0
    if got != entry.size:
        raise bad(path, f'is truncated: tensor {entry.name!r} needs bytes {entry.offset}..'
                        f'{entry.offset + entry.size}, only {got} of its {entry.size} bytes could be read; download '
                        'it again')
    actual = mask_crc(crc32c(data))
    if actual != entry.crc32c:
        raise bad(path, f'tensor {entry.name!r} (bytes {entry.offset}..{entry.offset + entry.size}) fails its '
                        f'CRC32C check (stored 0x{entry.crc32c:08x}, computed 0x{actual:08x}); {_FIX_DATA}')
    array = np.frombuffer(data, dtype=stored).reshape(entry.shape)
    if entry.dtype == 'bfloat16':
        return (array.astype(np.uint32) << 16).view(np.float32)
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder('='))
    return array


def _stored_dtype(name):
    """Return the numpy dtype of the stored bytes of a dtype name."""
    for dtype_name, stored in _DTYPES.values():
        if dtype_name == name:
            return np.dtype(stored)
    raise AssertionError(name)  # pragma: no cover - names come from _DTYPES


def _state_paths(text):
    """Return [(field, quoted value bytes)] of the path lines of a `checkpoint` file."""
    paths = []
    for line in text.splitlines():
        field, _, rest = line.partition(b':')
        field = field.strip()
        if field in (b'model_checkpoint_path', b'all_model_checkpoint_paths'):
            paths.append((field.decode('ascii'), rest.strip()))
    return paths


def latest_checkpoint(directory, path=None):
    """Return the prefix named by `directory/checkpoint` (like tf.train.latest_checkpoint), or by the file at path (e.g.
    a download's .part) with names relative to directory. Every path the file names (model_checkpoint_path and
    all_model_checkpoint_paths) must lie inside directory (a relative one is taken from it; an absolute one, as
    tf.train.Saver writes, must be inside it): another is refused without saying whether it exists."""
    directory = untrusted.check_path_text(directory, 'folder')
    path = os.path.join(directory, 'checkpoint') if path is None else untrusted.check_path_text(path)
    with untrusted.reading(path):
        text = untrusted.read_bytes(
            path, None, STATE_MAX_BYTES, "'checkpoint' file",
            missing="a TensorFlow checkpoint directory has a 'checkpoint' file naming its latest prefix; download it "
                    'or pass the prefix directly')
        latest = None
        for field, value in _state_paths(text):
            if len(value) < 2 or value[:1] != b'"' or value[-1:] != b'"':
                raise bad(path, f'has a {field} that is not a quoted string ({untrusted.show(value)}); download it '
                                'again or pass the checkpoint prefix directly')
            try:
                name = _c_unescape(value[1:-1]).decode('utf-8')
            except (ValueError, UnicodeDecodeError):
                raise bad(path, f'has a {field} that is not a valid string ({untrusted.show(value)}); download it '
                                'again or pass the checkpoint prefix directly') from None
            prefix = untrusted.contained(directory, name, path)
            if field == 'model_checkpoint_path' and latest is None:
                latest = prefix
        if latest is None:
            raise bad(path, 'has no readable model_checkpoint_path line; download it again or pass the checkpoint '
                            'prefix directly')
        return latest


def _c_unescape(raw):
    """Undo protobuf text-format (C-style) escaping of a quoted string's bytes."""
    out, i = bytearray(), 0
    simple = {ord('n'): 10, ord('r'): 13, ord('t'): 9, ord('"'): 34, ord("'"): 39,
              ord("\\"): 92, ord('a'): 7, ord('b'): 8, ord('f'): 12, ord('v'): 11,
              ord('?'): 63}
    while i < len(raw):
        if raw[i] != 92:
            out.append(raw[i])
            i += 1
            continue
        if i + 1 >= len(raw):
            raise ValueError('dangling backslash')
        nxt = raw[i + 1]
        if nxt in simple:
            out.append(simple[nxt])
            i += 2
        elif 48 <= nxt <= 55:
            digits = raw[i + 1:i + 4]
            count = next((k for k, c in enumerate(digits) if not 48 <= c <= 55), len(digits))
            out.append(int(digits[:count], 8) & 0xFF)
            i += 1 + count
        elif nxt == ord('x'):
            digits = raw[i + 2:i + 4]
            count = next((k for k, c in enumerate(digits)
                          if chr(c) not in '0123456789abcdefABCDEF'), len(digits))
            if count == 0:
                raise ValueError('empty hex escape')
            out.append(int(digits[:count], 16))
            i += 2 + count
        else:
            raise ValueError('unknown escape')
    return bytes(out)


# ------------------------------------------------------------------------- writer


def _varint_bytes(value):
    """Encode a non-negative integer as a base-128 varint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _pb_varint(number, value):
    """Encode a proto3 varint field, omitted when zero."""
    return _varint_bytes(number << 3) + _varint_bytes(value) if value else b''


def _pb_message(number, payload):
    """Encode a set (possibly empty) length-delimited field."""
    return _varint_bytes(number << 3 | 2) + _varint_bytes(len(payload)) + payload


def _pb_fixed32(number, value):
    """Encode a proto3 fixed32 field, omitted when zero."""
    return _varint_bytes(number << 3 | 5) + struct.pack('<I', value) if value else b''


def _header_proto(num_shards=1, endianness=0, producer=BUNDLE_VERSION, min_consumer=0):
    """Serialize a BundleHeaderProto as TensorFlow's BundleWriter does."""
    version = _pb_varint(1, producer) + _pb_varint(2, min_consumer)
    return _pb_varint(1, num_shards) + _pb_varint(2, endianness) + _pb_message(3, version)


def _entry_proto(dtype_enum, shape, shard, offset, size, masked_crc):
    """Serialize a BundleEntryProto in field order, as protobuf C++ does."""
    dims = b''.join(_pb_message(2, _pb_varint(1, dim)) for dim in shape)
    return (_pb_varint(1, dtype_enum) + _pb_message(2, dims) + _pb_varint(3, shard)
            + _pb_varint(4, offset) + _pb_varint(5, size) + _pb_fixed32(6, masked_crc))


class _BlockBuilder:
    """Accumulates prefix-compressed entries of one table block."""

    def __init__(self, restart_interval):
        """Start an empty block."""
        self.interval = restart_interval
        self.buffer = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b''

    def empty(self):
        """Return whether no entry was added."""
        return not self.buffer

    def size_estimate(self):
        """Return the finished size, as LevelDB's CurrentSizeEstimate computes it."""
        return len(self.buffer) + 4 * len(self.restarts) + 4

    def add(self, key, value):
        """Append one entry, restarting prefix compression every `interval` entries."""
        shared = 0
        if self.counter < self.interval:
            limit = min(len(key), len(self.last_key))
            while shared < limit and key[shared] == self.last_key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buffer))
            self.counter = 0
        self.buffer += (_varint_bytes(shared) + _varint_bytes(len(key) - shared)
                        + _varint_bytes(len(value)) + key[shared:] + value)
        self.last_key = key
        self.counter += 1

    def finish(self):
        """Return the block bytes with the restart array appended."""
        tail = b''.join(struct.pack('<I', r) for r in self.restarts)
        return bytes(self.buffer) + tail + struct.pack('<I', len(self.restarts))


def _shortest_separator(start, limit):
    """Return a short key k with start <= k < limit (LevelDB's FindShortestSeparator)."""
    common = 0
    while common < min(len(start), len(limit)) and start[common] == limit[common]:
        common += 1
    if common < min(len(start), len(limit)):
        byte = start[common]
        if byte < 0xFF and byte + 1 < limit[common]:
            return start[:common] + bytes([byte + 1])
    return start


def _short_successor(key):
    """Return a short key >= key (LevelDB's FindShortSuccessor)."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


def _block_with_trailer(contents):
    """Return a raw (uncompressed) block followed by its type byte and masked CRC32C."""
    return contents + b'\x00' + struct.pack('<I', mask_crc(crc32c(contents + b'\x00')))


def _encode_handle(offset, size):
    """Encode a BlockHandle."""
    return _varint_bytes(offset) + _varint_bytes(size)


class _TableBuilder:
    """Builds a table exactly as TensorFlow's TableBuilder (uncompressed) does."""

    def __init__(self, block_size=BLOCK_SIZE):
        """Start an empty table."""
        self.block_size = block_size
        self.out = bytearray()
        self.data = _BlockBuilder(RESTART_INTERVAL)
        self.index = _BlockBuilder(1)
        self.pending = None
        self.last_key = b''
        self.count = 0

    def _write_block(self, block):
        """Append a finished block and its trailer; return its (offset, size) handle."""
        contents = block.finish()
        handle = (len(self.out), len(contents))
        self.out += _block_with_trailer(contents)
        return handle

    def _flush(self):
        """Write the current data block, if any, and remember its handle for the index."""
        if not self.data.empty():
            self.pending = self._write_block(self.data)
            self.data = _BlockBuilder(RESTART_INTERVAL)

    def add(self, key, value):
        """Add one entry; keys must come in strictly increasing order."""
        if self.count and len(key) + len(value) >= 2 * self.block_size:
            self._flush()
        if self.pending is not None:
            separator = _shortest_separator(self.last_key, key)
            self.index.add(separator, _encode_handle(*self.pending))
            self.pending = None
        self.data.add(key, value)
        self.last_key = key
        self.count += 1
        if self.data.size_estimate() >= self.block_size:
            self._flush()

    def finish(self):
        """Write the last data block, the empty metaindex, the index and the footer."""
        self._flush()
        meta_handle = self._write_block(_BlockBuilder(RESTART_INTERVAL))
        if self.pending is not None:
            key = _short_successor(self.last_key)
            self.index.add(key, _encode_handle(*self.pending))
            self.pending = None
        index_handle = self._write_block(self.index)
        handles = _encode_handle(*meta_handle) + _encode_handle(*index_handle)
        self.out += handles.ljust(HANDLE_AREA_SIZE, b'\x00') + struct.pack('<Q', TABLE_MAGIC)
        return bytes(self.out)


def _build_table(items, block_size=BLOCK_SIZE):
    """Serialize sorted (key, value) pairs into table bytes."""
    builder = _TableBuilder(block_size)
    for key, value in items:
        builder.add(key, value)
    return builder.finish()


def _to_record(name, array):
    """Validate one (name, array) pair and return its little-endian raw bytes record."""
    if not isinstance(name, str) or not name:
        raise ValueError(f'tensor name {name!r} is not a non-empty string; name every tensor')
    array = np.asarray(array)
    dtype = array.dtype
    if dtype.name == 'bfloat16' and dtype.itemsize == 2:
        enum, stored = _BFLOAT16, np.dtype('<u2')
        array = array.view(np.uint16)
    elif (dtype.kind, dtype.itemsize) in _ENUM_OF_KIND:
        enum = _ENUM_OF_KIND[(dtype.kind, dtype.itemsize)]
        stored = dtype.newbyteorder('<')
    else:
        raise ValueError(f'tensor {name!r} has dtype {dtype}, which a TensorFlow checkpoint '
                         'cannot hold here; convert it to a numeric or bool dtype')
    raw = np.ascontiguousarray(array, dtype=stored).reshape(-1).view(np.uint8)
    return _Record(name, enum, tuple(int(d) for d in array.shape), raw)


def _write_bundle(prefix, records):
    """Write records (name, DataType enum, shape, raw bytes) as a one-shard checkpoint."""
    records = sorted(records, key=lambda record: record.name.encode('utf-8'))
    names = [record.name for record in records]
    if len(set(names)) != len(names):
        raise ValueError(f'{prefix}: duplicate tensor names; give every tensor its own name')
    items, offset = [(b'', _header_proto())], 0
    for record in records:
        size = len(record.data)
        crc = mask_crc(crc32c(record.data))
        items.append((record.name.encode('utf-8'),
                      _entry_proto(record.dtype_enum, record.shape, 0, offset, size, crc)))
        offset += size
    directory = os.path.dirname(prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    untrusted.write_atomically(_data_path(prefix, 0, 1), (memoryview(r.data) for r in records))
    untrusted.write_atomically(f'{prefix}.index', [_build_table(items)])


def _c_escape(text):
    """Escape a string as protobuf's text format does (C escapes, octal for non-ASCII)."""
    special = {10: '\\n', 13: '\\r', 9: '\\t', 34: '\\"', 39: "\\'", 92: "\\\\"}
    out = []
    for byte in text.encode('utf-8'):
        if byte in special:
            out.append(special[byte])
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append(f'\\{byte:03o}')
    return ''.join(out)


def _write_state(prefix):
    """Write the `checkpoint` file beside the prefix, naming it as the latest checkpoint."""
    name = _c_escape(os.path.basename(prefix))
    text = f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n'
    path = os.path.join(os.path.dirname(prefix), 'checkpoint')
    untrusted.write_atomically(path, [text.encode('ascii')])


def write_tf_checkpoint(prefix, arrays, write_state=True):
    """Write {name: array} as `<prefix>.index` + `<prefix>.data-00000-of-00001` (+ `checkpoint`)."""
    prefix = os.fspath(prefix)
    records = [_to_record(name, array) for name, array in arrays.items()]
    _write_bundle(prefix, records)
    if write_state:
        _write_state(prefix)
