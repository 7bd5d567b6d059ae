/* postern action plugin ABI, version 1.
 *
 * A plugin is a shared library loaded by posternd with
 *   [[action]]
 *   type = "plugin"
 *   path = "/usr/lib/postern/libmyplugin.so"
 *   config = { ... }            # passed to postern_plugin_init as JSON
 *
 * Strings are NUL-terminated UTF-8. Data crosses as JSON:
 *   opening: {"source":"10.0.0.5","proto":"tcp","port":22,"timeout_secs":30,"expires_at":1767225600}
 *   rule:    {"source":"10.0.0.5","proto":"tcp","port":22}
 * With ENABLE_DESTINATION_RULE a rule (and opening) also has
 *   "destination":"192.0.2.1"   (the server address the knock was sent to)
 * and must match only traffic to it. Such rules are sent only to a plugin
 * whose flags have POSTERN_PLUGIN_DESTINATION; posternd refuses to start with
 * ENABLE_DESTINATION_RULE and a plugin without it. A plugin listing its
 * openings returns the destination it was given.
 * Functions returning int32_t return 0 on success and non-zero on error, with a
 * message written into err (err_len bytes, always NUL-terminated).
 * posternd calls a plugin from one thread only.
 */
#include <stddef.h>
#include <stdint.h>

#define POSTERN_PLUGIN_ABI_VERSION 1u
#define POSTERN_PLUGIN_EXPIRES_ITSELF 1u  /* flag: the target drops grants at their timeout */
#define POSTERN_PLUGIN_DESTINATION    2u  /* flag: rules may carry "destination" (added in 1, optional) */

uint32_t postern_plugin_abi_version(void);                 /* checked before anything else */
void    *postern_plugin_init(const char *config_json, char *err, size_t err_len); /* NULL = error */
uint32_t postern_plugin_flags(void *state);
int32_t  postern_plugin_grant(void *state, const char *openings_json, char *err, size_t err_len);
int32_t  postern_plugin_revoke(void *state, const char *rules_json, char *err, size_t err_len);
/* Writes a JSON array of openings into out; returns -N if out needs N bytes. */
int32_t  postern_plugin_list(void *state, char *out, size_t out_len, char *err, size_t err_len);
int32_t  postern_plugin_flush(void *state, char *err, size_t err_len);
void     postern_plugin_shutdown(void *state);
