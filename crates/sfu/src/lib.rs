//! Selective forwarding unit (SFU) on str0m. Work in progress.
