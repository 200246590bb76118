package natlab

import (
	"fmt"
	"testing"
)

// want is written out independently of NAT.Behavior so that a wrong profile
// definition fails here too.
var wantBehavior = map[NAT]Behavior{
	FullCone:          {Mapping: MappingEndpointIndependent, Filtering: FilteringEndpointIndependent, PortPreserving: true, IPv6Firewall: true},
	AddressRestricted: {Mapping: MappingEndpointIndependent, Filtering: FilteringAddressDependent, PortPreserving: true, IPv6Firewall: true},
	PortRestricted:    {Mapping: MappingEndpointIndependent, Filtering: FilteringAddressAndPortDependent, PortPreserving: true, IPv6Firewall: true},
	Symmetric:         {Mapping: MappingAddressAndPortDependent, Filtering: FilteringAddressAndPortDependent, PortPreserving: false, IPv6Firewall: true},
	None:              {Mapping: MappingNone, Filtering: FilteringEndpointIndependent, PortPreserving: true, Hairpin: true, IPv6Firewall: false},
}

func TestProfiles(t *testing.T) {
	for _, nat := range NATs {
		for _, hairpin := range []bool{false, true} {
			if nat == None && hairpin {
				continue // no NAT: hairpin is plain routing, covered by hairpin=false
			}
			t.Run(fmt.Sprintf("%v/hairpin=%v", nat, hairpin), func(t *testing.T) {
				t.Parallel()
				lab := New(t, Topology{Routers: []Router{{Name: "a", NAT: nat, Hairpin: hairpin, Hosts: 1}}})
				got, ok := lab.Measured("a")
				if !ok {
					t.Fatal("self-check measured nothing for router a")
				}
				want := wantBehavior[nat]
				if nat != None {
					want.Hairpin = hairpin
				}
				if got.Behavior != want {
					t.Errorf("measured %+v, want %+v\n%s", got.Behavior, want, lab.BehaviorTable(map[string]Measured{"a": got}))
				}
				if nat.Behavior(hairpin) != want {
					t.Errorf("NAT(%v).Behavior(%v) = %+v, want %+v", nat, hairpin, nat.Behavior(hairpin), want)
				}
				t.Logf("build %v, self-check %v", lab.BuildTime, lab.SelfCheckTime)
			})
		}
	}
}
