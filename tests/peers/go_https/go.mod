module go_https

go 1.19
