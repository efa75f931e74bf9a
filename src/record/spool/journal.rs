//! The journal on disk: numbered segment files of checksummed frames, appended to and fsync'd
//! by one task, read back in order by the replayer, deleted once replayed.
//!
//! A frame is `len: u32 LE | crc32: u32 LE | payload (len bytes)`, the checksum over the
//! payload, which is never empty. A crash can leave the last frame of the last segment incomplete or with garbage
//! after it; [`Reader`] stops at the first frame that is short or fails its checksum, and
//! [`recover`] cuts such a tail off at startup, so a torn write is detected and never replayed
//! nor crashes the replay.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes before each payload.
pub const FRAME_HEADER: u64 = 8;
/// Longest payload accepted when reading: anything longer is a torn or corrupt length.
pub const MAX_PAYLOAD: u32 = 256 * 1024 * 1024;
const SUFFIX: &str = ".journal";

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub seq: u64,
    pub path: PathBuf,
    /// Valid bytes (whole frames).
    pub bytes: u64,
    /// Whole frames.
    pub records: u64,
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SUFFIX}"))
}

/// Appends the frame of `payload` to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The size of the frame of a payload of `len` bytes.
pub fn frame_len(len: usize) -> u64 {
    FRAME_HEADER + len as u64
}

/// Why reading stopped before the end of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Torn {
    /// The file ends inside a frame.
    Short { offset: u64 },
    /// A frame's length is impossible or its checksum does not match.
    Corrupt { offset: u64 },
}

impl Torn {
    pub fn offset(&self) -> u64 {
        match self {
            Torn::Short { offset } | Torn::Corrupt { offset } => *offset,
        }
    }
}

impl std::fmt::Display for Torn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Torn::Short { offset } => write!(f, "incomplete frame at byte {offset}"),
            Torn::Corrupt { offset } => write!(f, "corrupt frame at byte {offset}"),
        }
    }
}

/// Reads the frames of one segment, in order.
pub struct Reader {
    r: BufReader<File>,
    offset: u64,
}

impl Reader {
    pub fn open(path: &Path) -> io::Result<Reader> {
        Ok(Reader {
            r: BufReader::with_capacity(256 * 1024, File::open(path)?),
            offset: 0,
        })
    }

    /// Bytes of whole frames read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next payload; `Ok(None)` at a clean end; `Err(Ok(torn))` where the valid frames end.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, Result<Torn, io::Error>> {
        let mut header = [0u8; FRAME_HEADER as usize];
        match read_full(&mut self.r, &mut header).map_err(Err)? {
            0 => return Ok(None),
            n if n < header.len() => {
                return Err(Ok(Torn::Short {
                    offset: self.offset,
                }))
            }
            _ => {}
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        // Records are never empty: a zero length is what a zero-filled tail (a crash after the
        // file grew but before its data reached the disk) looks like.
        if len == 0 || len > MAX_PAYLOAD {
            return Err(Ok(Torn::Corrupt {
                offset: self.offset,
            }));
        }
        let mut payload = vec![0u8; len as usize];
        if read_full(&mut self.r, &mut payload).map_err(Err)? < payload.len() {
            return Err(Ok(Torn::Short {
                offset: self.offset,
            }));
        }
        if crc32fast::hash(&payload) != crc {
            return Err(Ok(Torn::Corrupt {
                offset: self.offset,
            }));
        }
        self.offset += frame_len(payload.len());
        Ok(Some(payload))
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One segment as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// Its whole frames.
    pub segment: Segment,
    /// Where the whole frames end, when something else follows them.
    pub torn: Option<Torn>,
    /// The file's size.
    pub size: u64,
}

/// The segments in `dir`, oldest first, each read to its last whole frame. Changes nothing.
/// Files that are not segments are ignored.
pub fn scan(dir: &Path) -> io::Result<Vec<Scanned>> {
    let mut seqs: Vec<u64> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name.strip_suffix(SUFFIX).and_then(|s| s.parse().ok()) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let path = segment_path(dir, seq);
        let size = fs::metadata(&path)?.len();
        let mut reader = Reader::open(&path)?;
        let mut records = 0u64;
        let torn = loop {
            match reader.next_frame() {
                Ok(Some(_)) => records += 1,
                Ok(None) => break None,
                Err(Ok(torn)) => break Some(torn),
                Err(Err(e)) => return Err(e),
            }
        };
        out.push(Scanned {
            segment: Segment {
                seq,
                path,
                bytes: reader.offset(),
                records,
            },
            torn,
            size,
        });
    }
    Ok(out)
}

/// The segments in `dir`, oldest first ([`scan`]), with every torn tail cut off (logged) and
/// segments without a whole frame removed; also returns how many segments were torn.
pub fn recover(dir: &Path) -> io::Result<(Vec<Segment>, u64)> {
    let mut segments = Vec::new();
    let mut torn_segments = 0;
    for Scanned {
        segment,
        torn,
        size,
    } in scan(dir)?
    {
        if let Some(torn) = torn {
            torn_segments += 1;
            tracing::warn!(segment = %segment.path.display(), %torn, kept_bytes = segment.bytes,
                dropped_bytes = size - segment.bytes, "journal: torn write cut off");
            let f = OpenOptions::new().write(true).open(&segment.path)?;
            f.set_len(segment.bytes)?;
            f.sync_all()?;
        }
        if segment.records == 0 {
            fs::remove_file(&segment.path)?;
            continue;
        }
        segments.push(segment);
    }
    Ok((segments, torn_segments))
}

/// The segment being appended to. Created on its first append.
pub struct Active {
    dir: PathBuf,
    pub seq: u64,
    file: Option<File>,
    pub bytes: u64,
    pub records: u64,
}

impl Active {
    pub fn new(dir: &Path, seq: u64) -> Active {
        Active {
            dir: dir.to_owned(),
            seq,
            file: None,
            bytes: 0,
            records: 0,
        }
    }

    /// Writes `frames` (`records` whole frames) and makes them durable (fdatasync).
    pub fn append(&mut self, frames: &[u8], records: u64) -> io::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            let path = segment_path(&self.dir, self.seq);
            let f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            // The new file's directory entry must survive a crash too.
            File::open(&self.dir)?.sync_all()?;
            self.file = Some(f);
        }
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.write_all(frames).and_then(|()| f.sync_data()) {
                // Whatever part was written is not acknowledged: cut it off so the next
                // frames follow whole ones.
                let _ = f.set_len(self.bytes);
                return Err(e);
            }
        }
        self.bytes += frames.len() as u64;
        self.records += records;
        Ok(())
    }

    /// Closes this segment (when it holds anything) and starts the next; returns the closed
    /// one.
    pub fn seal(&mut self) -> Option<Segment> {
        if self.records == 0 {
            return None;
        }
        let sealed = Segment {
            seq: self.seq,
            path: segment_path(&self.dir, self.seq),
            bytes: self.bytes,
            records: self.records,
        };
        *self = Active::new(&self.dir, self.seq + 1);
        Some(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(seg: &Path) -> (Vec<Vec<u8>>, Option<Torn>) {
        let mut r = Reader::open(seg).expect("open");
        let mut out = Vec::new();
        loop {
            match r.next_frame() {
                Ok(Some(p)) => out.push(p),
                Ok(None) => return (out, None),
                Err(Ok(t)) => return (out, Some(t)),
                Err(Err(e)) => panic!("{e}"),
            }
        }
    }

    fn write(active: &mut Active, items: &[&[u8]]) {
        let mut buf = Vec::new();
        for p in items {
            encode(p, &mut buf);
        }
        active.append(&buf, items.len() as u64).expect("append");
    }

    #[test]
    fn frames_round_trip_in_order_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Active::new(dir.path(), 7);
        write(&mut a, &[b"one", b"2", b"three"]);
        let first = a.seal().expect("sealed");
        assert_eq!(a.seal(), None, "an empty segment is not sealed");
        write(&mut a, &[b"four"]);
        assert_eq!((first.seq, first.records, first.bytes), (7, 3, 3 * 8 + 9));
        let (segs, torn) = recover(dir.path()).expect("recover");
        assert_eq!(torn, 0);
        assert_eq!(segs.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![7, 8]);
        let (p, t) = payloads(&segs[0].path);
        assert_eq!(p, vec![b"one".to_vec(), b"2".to_vec(), b"three".to_vec()]);
        assert_eq!(t, None);
        assert_eq!(payloads(&segs[1].path).0, vec![b"four".to_vec()]);
    }

    #[test]
    fn torn_tails_are_detected_and_cut_never_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Active::new(dir.path(), 1);
        write(&mut a, &[b"kept-1", b"kept-2"]);
        let path = segment_path(dir.path(), 1);
        let whole = fs::metadata(&path).expect("meta").len();
        // Every way a crash can leave the tail: a cut header, a cut payload, garbage, a
        // flipped byte in the last payload.
        let mut last = Vec::new();
        encode(b"the last record, torn", &mut last);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("cut header", last[..5].to_vec()),
            ("cut payload", last[..last.len() - 3].to_vec()),
            ("garbage", vec![0xff; 40]),
            ("a few zeros", vec![0; 3]),
            ("zero-filled blocks", vec![0; 4096]),
            ("flipped byte", {
                let mut l = last.clone();
                let n = l.len();
                l[n - 1] ^= 0x40;
                l
            }),
        ];
        for (what, tail) in cases {
            let mut f = OpenOptions::new().append(true).open(&path).expect("open");
            f.write_all(&tail).expect("write");
            drop(f);
            let (p, t) = payloads(&path);
            assert_eq!(p.len(), 2, "{what}: the whole frames still read");
            assert_eq!(
                t.map(|t| t.offset()),
                Some(whole),
                "{what}: detected at the cut"
            );
            let (segs, torn) = recover(dir.path()).expect("recover");
            assert_eq!(torn, 1, "{what}");
            assert_eq!((segs[0].records, segs[0].bytes), (2, whole), "{what}");
            assert_eq!(
                fs::metadata(&path).expect("meta").len(),
                whole,
                "{what}: cut"
            );
            assert_eq!(
                payloads(&path),
                (vec![b"kept-1".to_vec(), b"kept-2".to_vec()], None)
            );
        }
    }

    #[test]
    fn a_segment_torn_before_its_first_frame_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(segment_path(dir.path(), 3), [1, 0, 0]).expect("write");
        fs::write(dir.path().join("notes.txt"), "not a segment").expect("write");
        let (segs, torn) = recover(dir.path()).expect("recover");
        assert!(segs.is_empty());
        assert_eq!(torn, 1);
        assert!(!segment_path(dir.path(), 3).exists());
        assert!(dir.path().join("notes.txt").exists());
    }
}
