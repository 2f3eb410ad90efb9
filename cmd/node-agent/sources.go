package main

import (
	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/azure"
	"github.com/lastcall-dev/lastcall/watcher/ec2"
	"github.com/lastcall-dev/lastcall/watcher/gce"
	"github.com/lastcall-dev/lastcall/watcher/sim"
)

func gceOptions(o *options) gce.Options {
	return gce.Options{Host: o.gceHost, PreemptionNotice: o.gceNotice, MaintenanceNotice: o.gceMaintenance}
}

func ec2Options(o *options) ec2.Options {
	return ec2.Options{Endpoint: o.awsEndpoint, PollInterval: o.awsInterval, AllowIMDSv1: o.awsIMDSv1}
}

func azureOptions(o *options) azure.Options {
	return azure.Options{Endpoint: o.azureEndpoint}
}

func simOptions(o *options) sim.Options {
	return sim.Options{File: o.simFile, Addr: o.simListen}
}

// azureAcknowledger approves Azure scheduled events after their drain.
type azureAcknowledger struct{ *azure.Watcher }

// Source says which notices it acknowledges.
func (azureAcknowledger) Source() watcher.Source { return watcher.SourceAzure }
