package pod

import (
	"io"
	"strconv"
	"strings"
)

func stringsReader(s string) io.Reader { return strings.NewReader(s) }

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
