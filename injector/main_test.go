package injector

import (
	"os"
	"testing"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// env is the control plane the apiserver tests share; nil under -short.
var env *kubetest.Env

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, &env)) }
