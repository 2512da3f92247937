"""Import instruction datasets into one normalised frame of samples (the first stage of the
flow in docs/architecture.md).

Formats (detected, or forced with ``format=``): Alpaca records (``instruction``, ``input``
optional, ``output``) as a JSON array or JSONL; ShareGPT (``conversations: [{from, value}]``);
OpenAI chat (``messages: [{role, content}]``); CSV and Parquet with a column mapping; a ``.gz``
of any of them; Hugging Face datasets (``hf``: a ``save_to_disk`` folder, an Arrow file, or
a Hub dataset by name), whose rows follow the Parquet rules.

Every sample keeps ``sample_id`` (0..n-1 in workspace order), ``source_row`` (0-based record
position in its file), the normalised ``instruction``/``input``/``output`` text, ``record``
(the original record as JSON, so export writes the input schema back verbatim),
``duplicate_of`` (sample_id of the first identical Q/A, or missing) and every other source
field untouched.

Multi-turn chats: Q is the system prompt and every turn before the last assistant turn,
rendered as ``"System: ...\\n\\nUser: ...\\n\\nAssistant: ...\\n\\nUser: ..."`` (a chat with a
single user turn and no system prompt gives that turn's text alone); A is the last assistant
turn; turns after it are ignored for scoring (they stay in ``record``).

Values are kept as read. JSON values stay as they are (NaN/Infinity too; export writes them
as ``null`` and says so). CSV cells are text, exactly as in the file. Parquet values are read
by pyarrow as Python values, never through a float column: integers stay integers (nullable
ones included); types JSON has no value for get one documented text form in ``record``:
binary → standard base64, date/time/timestamp → ISO 8601 (``2024-01-31``,
``2024-01-31T12:00:00+00:00``), decimal → its exact digits (``"12.340"``), duration → ISO
8601 (``P0DT0H1M30S``).

Bad input raises ``InputError`` naming the file, the row and the field (strict, the default);
with ``skip_invalid=True`` the valid rows are imported and each skipped row is reported with
its reason.

Modules: ``files`` (bytes, gzip/ZIP, decoding, file kind, the bad-row report),
``json_records`` (JSON/JSONL records, cut-off files), ``tables`` (CSV/TSV/Parquet),
``normalise`` (record → instruction/input/output, text checks, extra columns), ``hf``
(Hugging Face folders, Arrow files, the Hub; export as ``save_to_disk``), ``dataset``
(``read_dataset``), ``importer`` (pooling several files, creating the workspace).
"""

from .dataset import DEFAULT_MAX_CHARS, ImportResult, find_duplicates, read_dataset
from .files import FORMATS, detect_format
from .importer import ALPACA_LICENCE, import_to_workspace, read_datasets
from .normalise import RESERVED, parse_mapping

__all__ = ["ALPACA_LICENCE", "DEFAULT_MAX_CHARS", "FORMATS", "RESERVED", "ImportResult",
           "detect_format", "find_duplicates", "import_to_workspace", "parse_mapping",
           "read_dataset", "read_datasets"]
