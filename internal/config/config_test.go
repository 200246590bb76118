package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseRejectsWithKeyAndLine(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string // substrings of the error
	}{
		{"unknown top-level key", "statedir: /x\n", []string{`line 1`, `unknown key "statedir"`, "state-dir"}},
		{"unknown nested key", "log:\n  level: info\nhttp:\n  lisen: \":80\"\n", []string{`line 4`, `unknown key "http.lisen"`, "listen"}},
		{"bad duration", "shutdown-timeout: soon\n", []string{"line 1", "shutdown-timeout", `"soon" is not a duration`}},
		{"bad int", "http:\n  max-header-bytes: lots\n", []string{"line 2", "http.max-header-bytes"}},
		{"section not a mapping", "http: 8080\n", []string{"line 1", "http", "expected a mapping"}},
		{"not yaml", "http: [\n", []string{"not valid YAML"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("test.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse accepted %q", tc.yaml)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestValidateNamesKey(t *testing.T) {
	cases := []struct {
		yaml, key string
	}{
		{"http:\n  listen: \":70000\"\n", "http.listen"},
		{"http:\n  listen: \"nohost\"\n", "http.listen"},
		{"http:\n  pprof-listen: \"0.0.0.0:6060\"\n", "http.pprof-listen"},
		{"log:\n  level: loud\n", "log.level"},
		{"log:\n  format: xml\n", "log.format"},
		{"shutdown-timeout: 0s\n", "shutdown-timeout"},
		{"http:\n  read-timeout: -1s\n", "http.read-timeout"},
	}
	for _, tc := range cases {
		cfg, err := Parse("test.yaml", []byte(tc.yaml))
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.yaml, err)
		}
		err = cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.key+":") {
			t.Errorf("Validate of %q = %v, want an error starting %q", tc.yaml, err, tc.key+":")
		}
	}
}

func TestEmptyFileIsDefaults(t *testing.T) {
	for _, doc := range []string{"", "\n", "# only a comment\n"} {
		cfg, err := Parse("empty.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("Parse(%q): %v", doc, err)
		}
		if !reflect.DeepEqual(cfg, Default()) {
			t.Errorf("Parse(%q) = %+v, want defaults", doc, cfg)
		}
	}
}

func TestPartialFileKeepsOtherDefaults(t *testing.T) {
	cfg, err := Parse("p.yaml", []byte("http:\n  listen: 127.0.0.1:9000\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTP.Listen != "127.0.0.1:9000" {
		t.Errorf("listen = %q", cfg.HTTP.Listen)
	}
	if cfg.HTTP.ReadTimeout != Default().HTTP.ReadTimeout || cfg.ShutdownTimeout != 10*time.Second {
		t.Errorf("unset keys lost their defaults: %+v", cfg)
	}
}

// The output of --print-config, fed back as the config, gives the same config.
func TestMarshalRoundTrip(t *testing.T) {
	cfg := Default()
	cfg.StateDir = "/var/lib/rendezvous"
	cfg.HTTP.Listen = "[::1]:8443"
	cfg.HTTP.PprofListen = "127.0.0.1:6060"
	cfg.HTTP.IdleTimeout = 90 * time.Second
	cfg.Log.Level = "debug"
	cfg.ShutdownTimeout = 3500 * time.Millisecond
	out, err := Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse("printed.yaml", out)
	if err != nil {
		t.Fatalf("printed config does not parse: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(back, cfg) {
		t.Errorf("round trip changed the config:\n got %+v\nwant %+v\nyaml:\n%s", back, cfg, out)
	}
	if err := back.Validate(); err != nil {
		t.Errorf("printed config does not validate: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("http:\n  listen: :8080\n"))
	f.Add([]byte("log: {level: debug}\nshutdown-timeout: 1s\n"))
	f.Add([]byte("&a x: *a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		if cfg.Validate() != nil {
			return
		}
		out, err := Marshal(cfg)
		if err != nil {
			t.Fatalf("valid config does not marshal: %v", err)
		}
		back, err := Parse("again.yaml", out)
		if err != nil || !reflect.DeepEqual(back, cfg) {
			t.Fatalf("round trip: %v\n%s", err, out)
		}
	})
}
