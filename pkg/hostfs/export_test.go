package hostfs

// DisableOpenat2 makes r use the component walk, as on Linux < 5.6.
func DisableOpenat2(r *Root) { r.noOpenat2 = true }
