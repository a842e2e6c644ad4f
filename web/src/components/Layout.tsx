import type { ReactNode } from 'react';
import { NavLink, useNavigate } from 'react-router-dom';
import { AppBar, Box, Button, Chip, Drawer, List, ListItemButton, ListItemText, Toolbar, Typography } from '@mui/material';
import { useQueryClient } from '@tanstack/react-query';
import { post } from '../api/client';
import { useAuth } from '../store/auth';
import { useNet } from '../store/net';
import { brand } from '../theme';
import { NetworkBanner } from './NetworkBanner';

const WIDTH = 210;

const NAV: { to: string; label: string; admin?: boolean }[] = [
  { to: '/', label: 'Dashboard' },
  { to: '/clusters', label: 'Clusters' },
  { to: '/services', label: 'Services' },
  { to: '/mappings', label: 'Mappings' },
  { to: '/forwards', label: 'Port forwards' },
  { to: '/routes', label: 'Ingress routes' },
  { to: '/proxies', label: 'Proxies' },
  { to: '/certificates', label: 'Certificates' },
  { to: '/audit', label: 'Audit log', admin: true },
  { to: '/users', label: 'Users & roles', admin: true },
  { to: '/license', label: 'Licence' },
];

export function Layout({ children }: { children: ReactNode }) {
  const me = useAuth((s) => s.me);
  const tokens = useAuth((s) => s.tokens);
  const logout = useAuth((s) => s.logout);
  const live = useNet((s) => s.live);
  const qc = useQueryClient();
  const navigate = useNavigate();
  const onLogout = async () => {
    try {
      await post('/auth/logout', { refresh_token: tokens?.refresh });
    } catch {
      /* logging out locally is what matters */
    }
    logout();
    qc.clear();
    navigate('/');
  };
  return (
    <Box sx={{ display: 'flex', minHeight: '100vh' }}>
      <AppBar position="fixed" sx={{ zIndex: (t) => t.zIndex.drawer + 1 }}>
        <Toolbar variant="dense" sx={{ gap: 2 }}>
          <Typography component="span" variant="h6" sx={{ color: brand.gold, fontWeight: 700, flexGrow: 1 }}>
            MarchProxy
          </Typography>
          <Chip
            size="small"
            label={live === 'live' ? 'Live' : live === 'connecting' ? 'Connecting…' : 'Reconnecting…'}
            color={live === 'live' ? 'success' : 'warning'}
            variant="outlined"
            data-testid="live-status"
          />
          <Button color="inherit" component={NavLink} to="/profile">
            {me?.username} ({me?.role})
          </Button>
          <Button color="inherit" onClick={() => void onLogout()}>
            Log out
          </Button>
        </Toolbar>
      </AppBar>
      <Drawer variant="permanent" sx={{ width: WIDTH, flexShrink: 0, '& .MuiDrawer-paper': { width: WIDTH } }}>
        <Toolbar variant="dense" />
        <nav aria-label="Main">
          <List dense>
            {NAV.filter((n) => !n.admin || me?.role === 'admin').map((n) => (
              <ListItemButton
                key={n.to}
                component={NavLink}
                to={n.to}
                end={n.to === '/'}
                sx={{ '&.active': { borderLeft: `3px solid ${brand.gold}`, bgcolor: 'rgba(255,215,0,0.08)' } }}
              >
                <ListItemText primary={n.label} />
              </ListItemButton>
            ))}
          </List>
        </nav>
      </Drawer>
      <Box component="main" sx={{ flexGrow: 1, p: 3, minWidth: 0 }}>
        <Toolbar variant="dense" />
        <NetworkBanner />
        {children}
      </Box>
    </Box>
  );
}
