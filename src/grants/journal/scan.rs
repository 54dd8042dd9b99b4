//! Scanning a journal file: intact records in order, and what counts as a torn tail
//! (damage reaching the end) or as corruption (damage followed by an intact record).

use std::{
    io::{self, BufReader, Read},
    path::Path,
};

use super::{
    FORMATS, JournalError, MAGIC, MAX_RECORD_LEN, RECORD_HEADER_LEN,
    format::{Record, decode_payload},
};

/// Where a scan of a journal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// How many intact records were read.
    pub records: usize,
    /// Bytes of the journal that are intact (magic and records).
    pub valid_len: u64,
    /// Bytes after `valid_len` that were damaged and may be truncated, and why.
    pub torn: Option<(u64, String)>,
    /// The file is empty or holds only part of the magic: write a fresh one.
    pub needs_magic: bool,
    /// The format its magic names (the one this version writes when it needs one).
    pub format: u8,
}

/// What a scan of a journal found, records included (see [`scan`]).
#[derive(Debug)]
pub struct Scan {
    /// Every intact record, in file order, with its byte offset.
    pub records: Vec<(u64, Record)>,
    /// Where the scan ended.
    pub end: ScanEnd,
}

/// Scans a whole journal into memory; see [`scan_records`].
pub fn scan(reader: impl Read, path: &Path) -> Result<Scan, JournalError> {
    let mut records = Vec::new();
    let end = scan_records(reader, path, &mut |offset, record| {
        records.push((offset, record))
    })?;
    Ok(Scan { records, end })
}

/// Reads up to `buf.len()` bytes, fewer only at end of input.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Parses one record at the start of `bytes`; `Some(total length)` when it is intact.
fn intact_record_len(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..RECORD_HEADER_LEN)?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if crc32fast::hash(&header[..8]) != word(8) || word(0) > MAX_RECORD_LEN {
        return None;
    }
    let end = RECORD_HEADER_LEN + word(0) as usize;
    let payload = bytes.get(RECORD_HEADER_LEN..end)?;
    (crc32fast::hash(payload) == word(4)).then_some(end)
}

/// Scans a journal from `reader` (the whole file), handing each intact record and its
/// byte offset to `sink` as it is read. Damage followed by an intact record is an error
/// naming its offset; damage reaching the end is reported in [`ScanEnd::torn`].
pub fn scan_records(
    reader: impl Read,
    path: &Path,
    sink: &mut dyn FnMut(u64, Record),
) -> Result<ScanEnd, JournalError> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let io_err = |e| JournalError::io(path, e);
    let corrupt = |offset: u64, reason: String| JournalError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    let mut magic = [0u8; MAGIC.len()];
    let n = read_up_to(&mut reader, &mut magic).map_err(io_err)?;
    let format_at = MAGIC.len() - 1;
    if let Some(bad) = (0..n.min(format_at)).find(|&i| magic[i] != MAGIC[i]) {
        return Err(corrupt(
            bad as u64,
            "not a stepgate grant journal (bad magic)".to_owned(),
        ));
    }
    if n < MAGIC.len() {
        return Ok(ScanEnd {
            records: 0,
            valid_len: 0,
            torn: (n > 0).then(|| (0, "incomplete file header".to_owned())),
            needs_magic: true,
            format: MAGIC[format_at],
        });
    }
    let format = magic[format_at];
    if !FORMATS.contains(&format) {
        return Err(corrupt(
            format_at as u64,
            format!("journal format {format} is not one this stepgate reads ({FORMATS:?})"),
        ));
    }
    let mut offset = MAGIC.len() as u64;
    let mut records = 0;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; RECORD_HEADER_LEN];
        let n = read_up_to(&mut reader, &mut header).map_err(io_err)?;
        if n == 0 {
            return Ok(ScanEnd {
                records,
                valid_len: offset,
                torn: None,
                needs_magic: false,
                format,
            });
        }
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let mut payload_read = 0;
        let damage = if n < RECORD_HEADER_LEN {
            Some("incomplete record header")
        } else if crc32fast::hash(&header[..8]) != word(8) {
            Some("record header checksum mismatch")
        } else if word(0) > MAX_RECORD_LEN {
            Some("record length over the limit")
        } else {
            payload.resize(word(0) as usize, 0);
            payload_read = read_up_to(&mut reader, &mut payload).map_err(io_err)?;
            if payload_read < payload.len() {
                Some("incomplete record")
            } else if crc32fast::hash(&payload) != word(4) {
                Some("record checksum mismatch")
            } else {
                None
            }
        };
        if let Some(reason) = damage {
            // This record as far as it was read, then the rest of the file.
            let mut rest = header[..n].to_vec();
            rest.extend_from_slice(&payload[..payload_read]);
            reader.read_to_end(&mut rest).map_err(io_err)?;
            if let Some(next) = (1..rest.len()).find(|&i| intact_record_len(&rest[i..]).is_some()) {
                return Err(corrupt(
                    offset,
                    format!(
                        "{reason}, with an intact record after it at byte offset {}",
                        offset + next as u64
                    ),
                ));
            }
            return Ok(ScanEnd {
                records,
                valid_len: offset,
                torn: Some((rest.len() as u64, reason.to_owned())),
                needs_magic: false,
                format,
            });
        }
        let record = decode_payload(&payload).map_err(|reason| corrupt(offset, reason))?;
        sink(offset, record);
        records += 1;
        offset += (RECORD_HEADER_LEN + payload.len()) as u64;
        // Keep the buffer from holding on to one unusually large record.
        if payload.capacity() > 1 << 16 {
            payload = Vec::new();
        }
    }
}
