//! Length-prefixed framing: a 2-byte big-endian length, then that many bytes.
//!
//! Two bytes because every frame carries exactly one Noise message, which the Noise spec caps at
//! 65535 bytes. Each decoder has its own, lower hard maximum (the control channel allows
//! [`MAX_CONTROL_FRAME`]); the length is checked against it *before* any buffer is reserved, so a
//! hostile length costs nothing. "Need more bytes" (`Ok(None)`) is kept apart from
//! "malformed" (`Err`), which closes the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Size of the length prefix.
pub const HEADER_LEN: usize = 2;
/// The largest frame the control channel accepts: control messages are a few hundred bytes
/// (an offer with 16 local addresses is under 600), so 4 KiB leaves room to grow while a hostile
/// peer can make the server buffer at most this much per connection.
pub const MAX_CONTROL_FRAME: usize = 4096;
/// The largest frame on a punched stream: one full Noise message.
pub const MAX_DATA_FRAME: usize = crate::noise::MAX_MESSAGE_LEN;

/// Why a frame was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame over the limit.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    Oversized { len: usize, max: usize },
    /// A zero-length frame: no Noise message is empty.
    #[error("empty frame")]
    Empty,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Codec for length-prefixed frames with a hard maximum.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec accepting frames of at most `max` bytes (clamped to what 2 bytes can say).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.min(u16::MAX as usize),
        }
    }

    /// The control-channel codec.
    pub fn control() -> Self {
        Self::new(MAX_CONTROL_FRAME)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// The body length announced by the frame at the front of `src`, checked against the
    /// maximum; `None` while the 2-byte header is incomplete. For readers that decode in place
    /// instead of splitting frames off (the body is whole once `src` holds `HEADER_LEN + len`).
    pub fn frame_len(&self, src: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(header) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::Oversized { len, max: self.max });
        }
        Ok(Some(len))
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(len) = self.frame_len(src)? else {
            return Ok(None);
        };
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let item = item.as_ref();
        if item.is_empty() {
            return Err(FrameError::Empty);
        }
        if item.len() > self.max {
            return Err(FrameError::Oversized {
                len: item.len(),
                max: self.max,
            });
        }
        dst.reserve(HEADER_LEN + item.len());
        dst.put_u16(item.len() as u16);
        dst.put_slice(item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        FrameCodec::control().encode(payload, &mut out).unwrap();
        out
    }

    #[test]
    fn exact_bytes() {
        assert_eq!(&encode(b"abc")[..], &[0, 3, b'a', b'b', b'c']);
        let big = vec![7u8; 300];
        assert_eq!(&encode(&big)[..2], &[1, 44]);
    }

    #[test]
    fn round_trip_many_sizes_and_split_points() {
        for len in [1usize, 2, 15, 255, 256, 1000, MAX_CONTROL_FRAME] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let wire = encode(&payload);
            for split in [0, 1, 2, wire.len() / 2, wire.len() - 1] {
                let mut codec = FrameCodec::control();
                let mut buf = BytesMut::from(&wire[..split]);
                assert!(
                    codec.decode(&mut buf).unwrap().is_none(),
                    "needs more bytes"
                );
                buf.extend_from_slice(&wire[split..]);
                assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], &payload[..]);
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn oversized_rejected_before_allocation() {
        let mut codec = FrameCodec::control();
        let mut buf = BytesMut::from(&[0xff, 0xff][..]);
        let cap = buf.capacity();
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::Oversized {
                len: 65535,
                max: MAX_CONTROL_FRAME
            })
        ));
        assert_eq!(buf.capacity(), cap, "nothing reserved for a hostile length");
        let mut out = BytesMut::new();
        assert!(codec
            .encode(&vec![0u8; MAX_CONTROL_FRAME + 1][..], &mut out)
            .is_err());
    }

    #[test]
    fn frame_len_agrees_with_decode() {
        let codec = FrameCodec::control();
        assert_eq!(codec.frame_len(&[]).unwrap(), None);
        assert_eq!(codec.frame_len(&[0]).unwrap(), None);
        assert_eq!(
            codec.frame_len(&[0, 3, b'a']).unwrap(),
            Some(3),
            "incomplete body"
        );
        assert_eq!(codec.frame_len(&encode(b"abc")).unwrap(), Some(3));
        assert!(matches!(codec.frame_len(&[0, 0]), Err(FrameError::Empty)));
        assert!(matches!(
            codec.frame_len(&[0x10, 0x01]),
            Err(FrameError::Oversized { len: 4097, .. })
        ));
    }

    #[test]
    fn empty_and_truncated() {
        let mut codec = FrameCodec::control();
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&[0u8, 0][..])),
            Err(FrameError::Empty)
        ));
        let mut truncated = BytesMut::from(&[0u8, 10, 1, 2, 3][..]);
        assert!(codec.decode(&mut truncated).unwrap().is_none());
        assert!(codec
            .decode(&mut BytesMut::from(&[0u8][..]))
            .unwrap()
            .is_none());
    }
}
