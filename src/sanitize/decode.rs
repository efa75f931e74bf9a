//! `Content-Encoding` undone for storage only (RFC 9110 §8.4): gzip, deflate and br, stacked
//! codings in reverse order, output capped. Encoded bytes are never stored — a secret in them
//! would be invisible to every rule — so what cannot be decoded is stored as a descriptor.

use std::borrow::Cow;
use std::io::Read;

/// Decodes `data` (which may be a cut prefix) under the codings listed in `encoding`. Returns
/// the decoded bytes, at most `limit`, and whether they are incomplete (input cut, decoder
/// stopped early, or output over the limit). `Err` says why nothing usable came out.
pub(super) fn decode(encoding: &str, data: &[u8], limit: usize) -> Result<(Vec<u8>, bool), String> {
    let codings: Vec<String> = encoding
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    if codings.len() > 4 {
        return Err("too many content codings".into());
    }
    let mut cur: Cow<'_, [u8]> = Cow::Borrowed(data);
    let mut incomplete = false;
    for coding in codings.iter().rev() {
        let (out, inc) = decode_one(coding, &cur, limit)?;
        incomplete |= inc;
        cur = Cow::Owned(out);
    }
    Ok((cur.into_owned(), incomplete))
}

fn decode_one(coding: &str, data: &[u8], limit: usize) -> Result<(Vec<u8>, bool), String> {
    match coding {
        "gzip" | "x-gzip" => read_capped(flate2::read::MultiGzDecoder::new(data), limit),
        // RFC 9110 "deflate" is zlib-wrapped; some servers send raw deflate.
        "deflate" => read_capped(flate2::read::ZlibDecoder::new(data), limit)
            .or_else(|_| read_capped(flate2::read::DeflateDecoder::new(data), limit)),
        "br" => read_capped(brotli_decompressor::Decompressor::new(data, 4096), limit),
        other => Err(format!("unsupported content coding {other:?}")),
    }
}

fn read_capped(reader: impl Read, limit: usize) -> Result<(Vec<u8>, bool), String> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    match reader.take(cap).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => {
            out.truncate(limit);
            Ok((out, true))
        }
        Ok(_) => Ok((out, false)),
        // A cut (or damaged) stream still yields what was decoded before the end.
        Err(_) if !out.is_empty() => Ok((out, true)),
        Err(e) => Err(format!("cannot decode: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    fn br(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).expect("write");
        drop(w);
        out
    }

    #[test]
    fn gzip_deflate_br_and_stacks() {
        let text = b"{\"password\":\"p\"}".repeat(10);
        assert_eq!(
            decode("gzip", &gzip(&text), 1 << 20),
            Ok((text.clone(), false))
        );
        assert_eq!(decode("br", &br(&text), 1 << 20), Ok((text.clone(), false)));
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).expect("write");
        let z = z.finish().expect("finish");
        assert_eq!(decode("deflate", &z, 1 << 20), Ok((text.clone(), false)));
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).expect("write");
        let raw = raw.finish().expect("finish");
        assert_eq!(decode("deflate", &raw, 1 << 20), Ok((text.clone(), false)));
        assert_eq!(
            decode("gzip, br", &br(&gzip(&text)), 1 << 20),
            Ok((text.clone(), false))
        );
    }

    #[test]
    fn output_is_capped_and_cut_input_yields_a_prefix() {
        let text = vec![b'a'; 100_000];
        let (out, incomplete) = decode("gzip", &gzip(&text), 1000).expect("decodes");
        assert_eq!((out.len(), incomplete), (1000, true));
        let long: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let z = gzip(&long);
        let (out, incomplete) = decode("gzip", &z[..z.len() / 2], 1 << 22).expect("prefix");
        assert!(incomplete && !out.is_empty() && long.starts_with(&out));
    }

    #[test]
    fn garbage_and_unknown_codings_are_errors() {
        assert!(decode("gzip", b"not gzip at all", 1000).is_err());
        assert!(decode("zstd", b"x", 1000).is_err());
    }
}
