//! What pgtmp keeps on disk, and every file-system action on it: the state directory, instance
//! directories and their state files, locks and the proofs of ownership and identity, and tree
//! copies, all through the directory handles of `safefs`; and what the trees take on disk.

pub mod clusters;
pub mod copytree;
pub mod instance;
pub mod ownership;
pub mod pg_tmp;
pub mod safefs;
pub mod saved;
pub mod segments;
pub mod statedir;
pub mod usage;
