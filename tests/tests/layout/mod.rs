//! How the product crates are laid out: what each folder may import.

mod imports;
