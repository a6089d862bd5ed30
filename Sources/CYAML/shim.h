// Why this header exists: libyaml's header is not part of Glibc's module map.
#include <yaml.h>
