//! Real containers of the sample image through the `strata` binary (root).

mod common;
