// Package docs holds lastcall's documentation, as Markdown: install per
// cloud, tasks, reference, concepts and runbooks. It has no code; its test
// checks that every relative link in the repository's README.md, in
// docs/ and in the charts' READMEs points at a file that exists, and at a
// heading of that file when it names one.
package docs
