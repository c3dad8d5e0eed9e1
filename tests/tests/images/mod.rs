//! Image folders (torchvision's ImageFolder layout) end to end: bad folders and files refused
//! in one line, a teacher of another input shape fed its own view, augmented views that the
//! teacher sees exactly as the student does and that a resumed run repeats, and the
//! `make demo-byo` sequence with tiny sizes.

mod augment;
mod demo;
mod folders;
mod views;
