//! The writable mount (issue 3), operation by operation, with real system calls on real
//! mounts. Every scenario runs against two backends through one trait (see `strata_testkit::backend`):
//! kernel overlayfs over the sample image's layer tars (the oracle: its variants must pass, which
//! validates the test), and `strata mount --rw` (its variants must pass once the writable layer
//! lands). Each scenario is generated as `kernel_<name>` and `strata_<name>`; the scenarios
//! live in one file per area (files, dirs, rename, links, special, names, permissions,
//! persistence, bad_input), the helpers they share in `helpers.rs`.
//!
//! Where strata must do better than kernel overlayfs (DESIGN §4, issue 3), the strata variant
//! asserts the better behaviour and the kernel variant asserts what the kernel does, with a
//! comment that says so. Kernel overlayfs is mounted with `redirect_dir=on,index=on,metacopy=off`.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use libc::{
    EACCES, EEXIST, EINVAL, EISDIR, ELOOP, ENAMETOOLONG, ENODATA, ENOENT, ENOTDIR, ENOTEMPTY,
    EPERM, ERANGE,
};
use rustix::fs::{AtFlags, CWD, FallocateFlags, Mode, OFlags as O, RenameFlags, XattrFlags};

use strata_testkit::backend::*;
use strata_testkit::mounts::{MountGuard, is_mounted};
use strata_testkit::posix::*;
use strata_testkit::snapshot::{Snapshot, assert_same_tree};

mod bad_input;
mod dirs;
mod files;
mod helpers;
mod links;
mod names;
mod permissions;
mod persistence;
mod rename;
mod special;

use bad_input::*;
use dirs::*;
use files::*;
use helpers::*;
use links::*;
use names::*;
use permissions::*;
use persistence::*;
use rename::*;
use special::*;

/// Generates `kernel_<name>`, `strata_<name>`, `strata_dev_<name>` and `strata_pt_<name>` for
/// each scenario `name(b: &dyn Backend)`: strata as mounted by default (FUSE over io_uring
/// where the kernel offers it, as under `tools/test`), strata taking every request through
/// `/dev/fuse`, and strata with `--io passthrough`.
macro_rules! scenarios {
    ($($scenario:ident: $kernel:ident, $strata:ident, $dev:ident, $pt:ident;)*) => {$(
        #[test]
        fn $kernel() {
            $scenario(&KernelOverlay::new());
        }

        #[test]
        fn $strata() {
            $scenario(&Strata::new());
        }

        #[test]
        fn $dev() {
            $scenario(&Strata::dev_fuse());
        }

        #[test]
        fn $pt() {
            $scenario(&Strata::passthrough());
        }
    )*};
}

scenarios! {
    create_write_read: kernel_create_write_read, strata_create_write_read, strata_dev_create_write_read, strata_pt_create_write_read;
    open_flags: kernel_open_flags, strata_open_flags, strata_dev_open_flags, strata_pt_open_flags;
    write_into_lower_file: kernel_write_into_lower_file, strata_write_into_lower_file, strata_dev_write_into_lower_file, strata_pt_write_into_lower_file;
    one_byte_write_into_16m_lower_file:
        kernel_one_byte_write_into_16m_lower_file, strata_one_byte_write_into_16m_lower_file, strata_dev_one_byte_write_into_16m_lower_file, strata_pt_one_byte_write_into_16m_lower_file;
    truncate_up_and_down: kernel_truncate_up_and_down, strata_truncate_up_and_down, strata_dev_truncate_up_and_down, strata_pt_truncate_up_and_down;
    fallocate_and_punch_hole: kernel_fallocate_and_punch_hole, strata_fallocate_and_punch_hole, strata_dev_fallocate_and_punch_hole, strata_pt_fallocate_and_punch_hole;
    sparse_file_at_1gib: kernel_sparse_file_at_1gib, strata_sparse_file_at_1gib, strata_dev_sparse_file_at_1gib, strata_pt_sparse_file_at_1gib;
    unlink_lower_and_upper: kernel_unlink_lower_and_upper, strata_unlink_lower_and_upper, strata_dev_unlink_lower_and_upper, strata_pt_unlink_lower_and_upper;
    unlinked_open_file: kernel_unlinked_open_file, strata_unlinked_open_file, strata_dev_unlinked_open_file, strata_pt_unlinked_open_file;
    mkdir_rmdir: kernel_mkdir_rmdir, strata_mkdir_rmdir, strata_dev_mkdir_rmdir, strata_pt_mkdir_rmdir;
    rmdir_then_mkdir_is_opaque: kernel_rmdir_then_mkdir_is_opaque, strata_rmdir_then_mkdir_is_opaque, strata_dev_rmdir_then_mkdir_is_opaque, strata_pt_rmdir_then_mkdir_is_opaque;
    readdir_after_changes: kernel_readdir_after_changes, strata_readdir_after_changes, strata_dev_readdir_after_changes, strata_pt_readdir_after_changes;
    remove_while_listing: kernel_remove_while_listing, strata_remove_while_listing, strata_dev_remove_while_listing, strata_pt_remove_while_listing;
    rename_files: kernel_rename_files, strata_rename_files, strata_dev_rename_files, strata_pt_rename_files;
    rename_lower_directory: kernel_rename_lower_directory, strata_rename_lower_directory, strata_dev_rename_lower_directory, strata_pt_rename_lower_directory;
    rename_noreplace_and_exchange:
        kernel_rename_noreplace_and_exchange, strata_rename_noreplace_and_exchange, strata_dev_rename_noreplace_and_exchange, strata_pt_rename_noreplace_and_exchange;
    rename_dir_over_dir: kernel_rename_dir_over_dir, strata_rename_dir_over_dir, strata_dev_rename_dir_over_dir, strata_pt_rename_dir_over_dir;
    hard_links: kernel_hard_links, strata_hard_links, strata_dev_hard_links, strata_pt_hard_links;
    symlinks: kernel_symlinks, strata_symlinks, strata_dev_symlinks, strata_pt_symlinks;
    metadata_changes_survive_remount:
        kernel_metadata_changes_survive_remount, strata_metadata_changes_survive_remount, strata_dev_metadata_changes_survive_remount, strata_pt_metadata_changes_survive_remount;
    xattrs: kernel_xattrs, strata_xattrs, strata_dev_xattrs, strata_pt_xattrs;
    special_files_and_statfs: kernel_special_files_and_statfs, strata_special_files_and_statfs, strata_dev_special_files_and_statfs, strata_pt_special_files_and_statfs;
    fsync_and_fdatasync: kernel_fsync_and_fdatasync, strata_fsync_and_fdatasync, strata_dev_fsync_and_fdatasync, strata_pt_fsync_and_fdatasync;
    flock_and_posix_locks: kernel_flock_and_posix_locks, strata_flock_and_posix_locks, strata_dev_flock_and_posix_locks, strata_pt_flock_and_posix_locks;
    mmap_shared_write: kernel_mmap_shared_write, strata_mmap_shared_write, strata_dev_mmap_shared_write, strata_pt_mmap_shared_write;
    name_max: kernel_name_max, strata_name_max, strata_dev_name_max, strata_pt_name_max;
    deep_paths_beyond_path_max: kernel_deep_paths_beyond_path_max, strata_deep_paths_beyond_path_max, strata_dev_deep_paths_beyond_path_max, strata_pt_deep_paths_beyond_path_max;
    non_root_permissions: kernel_non_root_permissions, strata_non_root_permissions, strata_dev_non_root_permissions, strata_pt_non_root_permissions;
    setuid_bits_dropped: kernel_setuid_bits_dropped, strata_setuid_bits_dropped, strata_dev_setuid_bits_dropped, strata_pt_setuid_bits_dropped;
    persistence_across_remount: kernel_persistence_across_remount, strata_persistence_across_remount, strata_dev_persistence_across_remount, strata_pt_persistence_across_remount;
    create_unlink_churn: kernel_create_unlink_churn, strata_create_unlink_churn, strata_dev_create_unlink_churn, strata_pt_create_unlink_churn;
    bad_layer_input: kernel_bad_layer_input, strata_bad_layer_input, strata_dev_bad_layer_input, strata_pt_bad_layer_input;
    layer_in_use: kernel_layer_in_use, strata_layer_in_use, strata_dev_layer_in_use, strata_pt_layer_in_use;
}
