//! What sharing saves: predictions from images alone ([`analyze`], [`scan`]), running
//! applications from mounted images like containers ([`container`], [`load`], [`runtime`]),
//! and reports in the form of the upstream cover letter ([`report`]).

pub mod analyze;
pub mod container;
pub mod demo;
pub mod interrupt;
pub mod load;
pub mod memory;
pub mod page_cache;
pub mod read_tree;
pub mod report;
pub mod runtime;
pub mod scan;
pub mod share;
pub mod speed;
