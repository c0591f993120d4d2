//! The watch stage: bytes from log files, cut into lines.
//!
//! This build has the line splitter that `replay` reads files with; tailing
//! files through rotation comes with the live daemon.

pub mod lines;
